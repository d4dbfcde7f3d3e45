"""The baselines X of "X vs IBTA-X", each in the setting the IBTA official code runs it.

``used_attacks.py`` and ``transfer.py`` of Biqing-Qi/Enhancing-Adversarial-Transferability-via-
Information-Bottleneck-Constraints (commit 6866b7a) define six IBTA attacks; their baselines are the same
loops without the IB terms. MI, DI and TI are the shared presets; S2I and RAP-LS are run differently from
their own papers' code and live here (:mod:`.s2i`, :mod:`.rap`); Logit-TI is the shared Logit attack with
the L1-mean normalisation the IBTA code applies. Settings common to all: eps 16/255, alpha 1.25/255,
momentum 1.0, no random start, ``delta`` only eps-clipped (``clip_delta=False``), steps 20 (300 for
Logit-TI, 400 for RAP-Logit-TI: ``transfer.py``, module level).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from papers_shared.attacks import DIFGSM, MIFGSM, TIFGSM, IterativeAttack, LogitAttack

from .rap import RAPIBTA, RAPLogitTI
from .s2i import S2IMIFGSM, SSA_MODES

__all__ = [
    "BASES",
    "BASE_CLASSES",
    "DEFAULT_STEPS",
    "RAPIBTA",
    "SSA_MODES",
    "RAPLogitTI",
    "S2IMIFGSM",
    "base_attack",
    "base_attack_spec",
]

BASES = ("mi", "di", "ti", "s2i", "logit_ti", "rap_logit_ti")
#: Number of iterations per base attack in the official ``transfer.py`` (module level).
DEFAULT_STEPS = {"mi": 20, "di": 20, "ti": 20, "s2i": 20, "logit_ti": 300, "rap_logit_ti": 400}
#: The class of each base attack (the IBTA variants subclass these).
BASE_CLASSES: dict[str, type[IterativeAttack]] = {
    "mi": MIFGSM,
    "di": DIFGSM,
    "ti": TIFGSM,
    "s2i": S2IMIFGSM,
    "logit_ti": LogitAttack,
    "rap_logit_ti": RAPLogitTI,
}


def base_attack_spec(
    base: str,
    *,
    eps: float = 16 / 255,
    alpha: float = 1.25 / 255,
    steps: int | None = None,
    targeted: bool = False,
    decay: float = 1.0,
    diversity_prob: float = 0.7,
    resize_rate: float = 0.9,
    ti_kernel: int | Tensor = 5,
    ti_nsig: float = 3.0,
    ssa_n: int = 20,
    ssa_rho: float = 0.5,
    ssa_sigma: float | None = None,
    ssa_mode: str = "ibta_code",
    rap_late_start: int = 100,
    rap_inner_steps: int = 1,
    rap_alpha_n: float | None = None,
    rap_eps_n: float = 12 / 255,
    clip_delta: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **extra: Any,
) -> tuple[type[IterativeAttack], dict[str, Any]]:
    """The attack class and keyword arguments of base attack ``base`` in the IBTA-code setting.

    One mapping serves the IBTA variants and their baselines, so "X vs IBTA-X" compares identical
    settings (ours). ``ssa_sigma=None`` means 0.1/255 for ``ssa_mode="ibta_code"`` (the value
    ``transfer.py`` passes: its ``--sigma`` 0.1 lands in the class's spectrum slot, which divides by 255)
    and 16/255 for ``"ssa_paper"``.

    Args: ``eps``, ``alpha``, ``steps`` (``None``: 20/20/20/20/300/400), ``targeted``, ``decay`` (momentum
    mu), DI ``diversity_prob`` / ``resize_rate``, TI ``ti_kernel`` / ``ti_nsig``, S2I ``ssa_n`` /
    ``ssa_rho`` / ``ssa_sigma`` (the actual spectrum-noise std) / ``ssa_mode``, RAP-LS ``rap_late_start``
    / ``rap_inner_steps`` / ``rap_alpha_n`` (``None``: alpha) / ``rap_eps_n``, ``clip_delta`` (keep
    ``x + delta`` in [0, 1] after each step; off in the official code), ``seed`` / ``generator`` (every
    random draw; ``seed`` makes calls repeatable); ``extra`` goes to the attack class unchanged.
    """
    if base not in BASES:
        raise ValueError(f"unknown IBTA base attack {base!r}; choose one of {list(BASES)}")
    steps = DEFAULT_STEPS[base] if steps is None else steps
    kw: dict[str, Any] = dict(
        eps=eps,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        decay=decay,
        diversity_prob=diversity_prob,
        resize_rate=resize_rate,
        ti_kernel=ti_kernel,
        ti_nsig=ti_nsig,
        clip_delta=clip_delta,
        seed=seed,
        generator=generator,
        random_start=False,
    )
    if base == "s2i":
        if ssa_mode not in SSA_MODES:
            raise ValueError(f"ssa_mode must be one of {list(SSA_MODES)}, got {ssa_mode!r}")
        if ssa_sigma is None:
            ssa_sigma = 0.1 / 255 if ssa_mode == "ibta_code" else 16 / 255
        # code: every pass's gradient is L1-mean normalised, the mean over the N copies goes straight
        # into the momentum (no second normalisation); DI on every copy.
        kw.update(
            n_spectrum=ssa_n,
            rho=ssa_rho,
            sigma=ssa_sigma,
            ssa_mode=ssa_mode,
            di=True,
            normalize_per_pass=True,
            normalize_grad=False,
        )
    elif base == "logit_ti":
        kw.update(normalize_grad=True)  # the IBTA code normalises (the Logit authors' code does not)
    elif base == "rap_logit_ti":
        kw.update(
            late_start=rap_late_start,
            inner_steps=rap_inner_steps,
            alpha_n=rap_alpha_n,
            eps_n=rap_eps_n,
            normalize_grad=True,
        )
    kw.update(extra)
    return BASE_CLASSES[base], kw


def base_attack(base: str, model: nn.Module, **kwargs: Any) -> IterativeAttack:
    """The plain baseline X of "X vs IBTA-X" (the shared preset with the IBTA-code settings)."""
    cls, kw = base_attack_spec(base, **kwargs)
    return cls(model, **kw)
