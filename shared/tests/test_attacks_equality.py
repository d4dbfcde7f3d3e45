"""Bit-for-bit equality of every preset with the outputs recorded before ``iterative.py`` was split.

The hashes in ``fixtures/attack_outputs.json`` were written by running the cases below on the code as
it was before the split into engine / gradient / input_transform / objective / minmax / registry. The
images are float64 so that a machine with other vector instructions rounds the gradients the same way
often enough for the sign steps to agree; the test compares whole tensors, not tolerances.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from papers_shared import attacks as A

FIXTURE = Path(__file__).parent / "fixtures" / "attack_outputs.json"
EPS = 8 / 255

#: case name -> (registered preset name, constructor keywords); run untargeted and targeted.
CASES = {
    "iterative": ("iterative", {"steps": 3}),
    "iterative_random_start": ("iterative", {"steps": 3, "random_start": True, "di": True, "ti": True}),
    "iterative_l2": ("iterative", {"eps": 0.5, "alpha": 0.2, "steps": 3, "norm": "l2", "random_start": True}),
    "iterative_no_clip_delta": ("iterative", {"steps": 3, "clip_delta": False, "loss": "logit"}),
    "ifgsm": ("ifgsm", {"steps": 3}),
    "mifgsm": ("mifgsm", {"steps": 3, "decay": 0.5}),
    "difgsm": ("difgsm", {"steps": 3}),
    "tifgsm": ("tifgsm", {"steps": 3}),
    "sinifgsm": ("sinifgsm", {"steps": 3, "num_scales": 3}),
    "vmifgsm": ("vmifgsm", {"steps": 3, "n_neighbors": 3}),
    "admix": ("admix", {"steps": 3, "m1": 2, "m2": 2}),
    "ssa_paper": ("ssa", {"steps": 3, "n_spectrum": 4, "copies_per_pass": 3}),
    "ssa_paper_backprop": ("ssa", {"steps": 3, "n_spectrum": 3, "straight_through": False}),
    "logit": ("logit", {"steps": 3}),
    "po_trip": ("po_trip", {"steps": 3}),
    "rap_official": ("rap", {"steps": 3, "late_start": 1, "inner_steps": 2}),
}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:20]


def outputs() -> dict[str, str]:
    """Hash of every case's adversarial images (what the fixture holds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = A.tiny_cnn(width=8, seed=0).double().eval()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (4,), generator=g)
        out = {}
        for case, (name, kw) in CASES.items():
            kw = {"eps": EPS, **kw}
            for targeted in (False, True):
                if name == "po_trip" and not targeted:
                    continue
                labels = (y + 1) % 10 if targeted else y
                atk = A.get_attack(name, model, targeted=targeted, seed=0, **kw)
                out[f"{case}/{'targeted' if targeted else 'untargeted'}"] = digest(atk(x, labels))
        atk = A.get_attack("po_trip", model, eps=EPS, targeted=True, seed=0, steps=3)
        out["po_trip/targeted_true_labels"] = digest(atk(x, (y + 1) % 10, true_labels=y))
        return out
    finally:
        torch.set_num_threads(threads)


def test_every_preset_equals_the_recorded_outputs():
    recorded = json.loads(FIXTURE.read_text())["outputs"]
    now = outputs()
    assert set(now) == set(recorded)
    differ = sorted(k for k in recorded if now[k] != recorded[k])
    assert not differ, f"outputs changed for {differ}"


def test_cases_are_distinct():
    # a case that silently fell back to another preset would repeat its hash
    recorded = json.loads(FIXTURE.read_text())["outputs"]
    assert len(set(recorded.values())) == len(recorded)


@pytest.mark.parametrize("case", ["ifgsm", "tifgsm", "rap_official"])
def test_a_changed_setting_changes_the_hash(case):
    """The comparison can fail: one step more gives a different digest."""
    model = A.tiny_cnn(width=8, seed=0).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=g)
    name, kw = CASES[case]
    a = A.get_attack(name, model, eps=EPS, seed=0, **kw)(x, y)
    b = A.get_attack(name, model, eps=EPS, seed=0, **{**kw, "steps": kw["steps"] + 1})(x, y)
    assert digest(a) != digest(b)
