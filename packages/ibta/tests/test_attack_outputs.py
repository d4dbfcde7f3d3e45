"""Bit-for-bit equality with the outputs recorded before the IBTA-only attack code moved into ibta.

``fixtures/attack_outputs.json`` holds the hashes of float64 adversarial images written on the code
as it was when ``RAPIBTA`` and ``SSA(ssa_mode="ibta_code")`` lived in ``papers_shared.attacks``. The
``moved`` cases rebuild those attacks with :mod:`ibta.baselines`; the ``ibta`` cases run the six IBTA
variants and their baselines, whose results must not have changed either.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import ibta
from ibta.baselines import S2IMIFGSM, RAPLogitTI
from papers_shared.attacks import tiny_cnn

FIXTURE = Path(__file__).parent / "fixtures" / "attack_outputs.json"
EPS = 8 / 255
FAST = dict(ssa_n=2, rap_late_start=1)

#: the former shared cases, now built from ibta.baselines (keywords as the old defaults implied)
MOVED = {
    "ssa_ibta_code": (S2IMIFGSM, dict(steps=3, n_spectrum=4, copies_per_pass=3, ssa_mode="ibta_code")),
    # the old RAP(inner_mode="reverse") with RAP's own defaults
    "rap_reverse": (
        RAPLogitTI,
        dict(
            steps=3,
            late_start=1,
            inner_steps=2,
            inner_random_start=True,
            eps_n=16 / 255,
            alpha=2 / 255,
            loss="ce",
            di=False,
            ti=False,
            mi=False,
            clip_delta=True,
        ),
    ),
    "rap_ibta": (RAPLogitTI, dict(steps=3, late_start=1, inner_steps=2)),
    "rap_ibta_default_inner": (RAPLogitTI, dict(steps=3, late_start=1)),
}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:20]


def _setup():
    model = tiny_cnn(width=8, seed=0).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=g)
    return model, x, y


def _modes(y):
    for targeted in (False, True):
        yield targeted, ((y + 1) % 10 if targeted else y), ("targeted" if targeted else "untargeted")


def moved_outputs() -> dict[str, str]:
    model, x, y = _setup()
    out = {}
    for case, (cls, kw) in MOVED.items():
        for targeted, labels, tag in _modes(y):
            out[f"{case}/{tag}"] = digest(cls(model, eps=EPS, targeted=targeted, seed=0, **kw)(x, labels))
    return out


def ibta_outputs() -> dict[str, str]:
    model, x, y = _setup()
    out = {}
    for base in ibta.BASES:
        for targeted, labels, tag in _modes(y):
            kw = dict(steps=3, targeted=targeted, seed=0, **FAST)
            out[f"ibta_{base}/{tag}"] = digest(ibta.IBTAAttack(model, base=base, **kw)(x, labels))
            out[f"base_{base}/{tag}"] = digest(ibta.base_attack(base, model, **kw)(x, labels))
    for targeted, labels, tag in _modes(y):
        kw = dict(ssa_mode="ssa_paper", steps=3, targeted=targeted, seed=0, ssa_n=3)
        out[f"ibta_s2i_ssa_paper/{tag}"] = digest(ibta.IBTAAttack(model, base="s2i", **kw)(x, labels))
        out[f"base_s2i_ssa_paper/{tag}"] = digest(ibta.base_attack("s2i", model, **kw)(x, labels))
        atk = ibta.IBTAAttack(
            model,
            base="rap_logit_ti",
            lam=1.0,
            steps=3,
            targeted=targeted,
            seed=0,
            rap_late_start=1,
            rap_inner_steps=2,
        )
        out[f"ibta_rap_logit_ti_lam1/{tag}"] = digest(atk(x, labels))
    return out


def test_moved_attacks_equal_the_recorded_outputs():
    recorded = json.loads(FIXTURE.read_text())["moved"]
    now = moved_outputs()
    assert set(now) == set(recorded)
    assert not sorted(k for k in recorded if now[k] != recorded[k])


def test_ibta_variants_and_baselines_equal_the_recorded_outputs():
    recorded = json.loads(FIXTURE.read_text())["ibta"]
    now = ibta_outputs()
    assert set(now) == set(recorded)
    assert not sorted(k for k in recorded if now[k] != recorded[k])
