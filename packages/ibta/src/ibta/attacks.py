"""IBTA attacks: the IB objective plugged into the iterative attacks of the baselines.

Every variant is its baseline X (:mod:`ibta.baselines`: the shared presets, or the IBTA-code variants of
S2I and RAP-LS) with two hooks, as in ``used_attacks.py`` of the official code
(Biqing-Qi/Enhancing-Adversarial-Transferability-via-Information-Bottleneck-Constraints, commit 6866b7a,
every ``IBTA_*.forward``):

* :meth:`IBTAAttack.setup` draws the noisy companion ``x~ = clip(x + sigma * xi)`` **once per call**
  (:func:`ibta.noise.noisy_companion`), from the attack's generator;
* :meth:`IBTAAttack.objective` runs the second branch ``z~ = f(T'(clip(x~ + delta)))`` with the shared
  ``delta`` (``self.state.delta``) and an independent transform draw ``T'``, and returns the IB
  objective (:func:`ibta.objective.ib_objective`).

With ``lam == gamma == 0`` the noisy branch is skipped (no draw, no extra forward pass), so the result
is bit-identical to the baseline with the same seed (ours: one code path for X and IBTA-X).
``shared_transform=True`` (ours, off by default) gives both branches the same DI draw per step instead of
independent ones.

Presets (the six classes of ``used_attacks.py``; steps as ``transfer.py`` runs them):

========================= ====================== ===================================================
class                     baseline class          settings
========================= ====================== ===================================================
:class:`IBTA_MIFGSM`      ``MIFGSM``             CE, 20 steps
:class:`IBTA_DIFGSM`      ``DIFGSM``             DI (p 0.7, rate 0.9), CE, 20 steps
:class:`IBTA_TIFGSM`      ``TIFGSM``             DI + TI 5x5, CE, 20 steps
:class:`IBTA_S2IFGSM`     ``S2IMIFGSM``          spectrum transform (N 20, rho 0.5) + DI, CE, 20 steps
:class:`IBTA_LogitTI`     ``LogitAttack``        DI + TI, logit loss, 300 steps, normalised gradient
:class:`IBTA_RAPLogitTI`  ``RAPLogitTI``         Logit-TI + RAP-LS (late start 100), 400 steps
========================= ====================== ===================================================

All use eps 16/255, alpha 1.25/255, momentum 1.0, no random start, and ``clip_delta=False`` (``delta``
is only eps-clipped, the forward pass uses ``clip(x + delta)``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from papers_shared.attacks import (
    DIFGSM,
    MIFGSM,
    TIFGSM,
    IterativeAttack,
    LogitAttack,
    repeat_labels,
    spectrum_transform,
)

from .baselines import BASES, DEFAULT_STEPS, S2IMIFGSM, RAPLogitTI, base_attack, base_attack_spec
from .noise import noisy_companion
from .objective import ib_terms

__all__ = [
    "BASES",
    "DEFAULT_STEPS",
    "IBTAAttack",
    "IBTA_DIFGSM",
    "IBTA_LogitTI",
    "IBTA_MIFGSM",
    "IBTA_RAPLogitTI",
    "IBTA_S2IFGSM",
    "IBTA_TIFGSM",
    "base_attack",
    "base_attack_spec",
]


@contextlib.contextmanager
def _replay_rng(generator: torch.Generator | None, state: Tensor) -> Iterator[None]:
    """Run the block from RNG ``state``, then put the RNG back where it was (no draw is consumed)."""
    now = generator.get_state() if generator is not None else torch.get_rng_state()
    (generator.set_state if generator is not None else torch.set_rng_state)(state)
    try:
        yield
    finally:
        (generator.set_state if generator is not None else torch.set_rng_state)(now)


class IBTAAttack(IterativeAttack):
    """IBTA attack over base attack ``base``.

    ``IBTAAttack(model, base="ti", ...)`` returns the matching preset (:class:`IBTA_TIFGSM` ...), which
    is also a subclass of its baseline class. Call it torchattacks-style:
    ``adv = attack(images, labels)`` (labels are target ids when ``targeted``).

    Args:
        model: classifier taking [0, 1] images.
        base: ``"mi" | "di" | "ti" | "s2i" | "logit_ti" | "rap_logit_ti"``.
        sigma: noise std of the companion ``x~`` (official code: ``sigma``/``sig``, default 0.1).
        gamma: weight of the noisy-branch loss (and, by default, of ``KL(p~ || p)``).
        lam: weight ``lambda`` of the divergence (official code: ``lmd``, default 0.1 in every class and
            in ``transfer.py``).
        gamma_kl: weight of ``KL(p~ || p)``; ``None`` means ``gamma`` (the code's behaviour).
        fuse_branches: run the clean and noisy branches as one ``2B`` batch (MI/DI/TI/Logit-TI only;
            same result up to float rounding, faster for small batches) (ours, off by default).
        shared_transform: give the noisy branch the same DI draw as the clean branch in each pass (one
            random resize-and-pad for both) instead of an independent one (ours, off by default; the
            official code draws DI independently per branch).
        **kwargs: the base attack's settings, as :func:`ibta.baselines.base_attack_spec` takes them
            (``eps``, ``alpha``, ``steps``, ``targeted``, ``seed``, DI / TI / S2I / RAP-LS parameters,
            ``clip_delta``; defaults: the official code's), and any other
            :class:`~papers_shared.attacks.IterativeAttack` option.

    After a call, :attr:`last_stats` holds one dict per objective evaluation (step, pass, loss,
    noisy_loss, divergence, objective) for logging.
    """

    base: str = ""
    name = "ibta"
    reference = "Qi et al., IEEE SPL 2024 (arXiv 2406.05531)"

    def __new__(cls, *args: Any, **kwargs: Any) -> IBTAAttack:
        if cls is IBTAAttack:
            base = kwargs.get("base", args[1] if len(args) > 1 else None)
            if base is None:
                raise ValueError(f"IBTAAttack needs base=... one of {list(BASES)}")
            if base not in _PRESET_BY_BASE:
                raise ValueError(f"unknown IBTA base attack {base!r}; choose one of {list(BASES)}")
            cls = _PRESET_BY_BASE[base]
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        base: str | None = None,
        *,
        sigma: float = 0.1,
        gamma: float = 0.1,
        lam: float = 0.1,
        gamma_kl: float | None = None,
        fuse_branches: bool = False,
        shared_transform: bool = False,
        **kwargs: Any,
    ) -> None:
        if type(self) is IBTAAttack or not type(self).base:
            raise TypeError("instantiate IBTAAttack(model, base=...) or one of the IBTA_* presets")
        if base is not None and base != type(self).base:
            raise ValueError(f"{type(self).__name__} is the {type(self).base!r} variant, got base={base!r}")
        for nm, v in (("sigma", sigma), ("gamma", gamma), ("lam", lam)):
            if not math.isfinite(float(v)) or float(v) < 0:
                raise ValueError(f"{nm} must be finite and >= 0, got {v!r}")
        if gamma_kl is not None and (not math.isfinite(float(gamma_kl)) or float(gamma_kl) < 0):
            raise ValueError(f"gamma_kl must be finite and >= 0, got {gamma_kl!r}")
        _, kw = base_attack_spec(type(self).base, **kwargs)
        super().__init__(model, **kw)
        # SSA stores its spectrum-noise std in ``sigma``; IBTA's ``sigma`` is the noise of x~
        self._ssa_sigma = float(getattr(self, "sigma", 0.0))
        self.sigma = float(sigma)
        self.gamma = float(gamma)
        self.lam = float(lam)
        self.gamma_kl = None if gamma_kl is None else float(gamma_kl)
        self.fuse_branches = bool(fuse_branches)
        self.shared_transform = bool(shared_transform)
        self.last_stats: list[dict[str, float]] = []

    # ------------------------------------------------------------------ IBTA hooks
    @property
    def ib_active(self) -> bool:
        """False when ``lam == gamma == 0``: the noisy branch is skipped (plain base attack)."""
        return not (self.lam == 0.0 and self.gamma == 0.0)

    def setup(self, x: Tensor, labels: Tensor) -> None:
        super().setup(x, labels)
        self.last_stats = []
        if self.ib_active and self.state is not None:
            # drawn once per call, fixed for all iterations (official code: before the step loop)
            self.state.extra["x_tilde"] = noisy_companion(x, self.sigma, self._gen())

    def _fusable(self) -> bool:
        return (
            self.fuse_branches
            and self.ib_active
            and type(self).base in ("mi", "di", "ti", "logit_ti")
            and self.passes == 1
            and self.state is not None
            and "x_tilde" in self.state.extra
        )

    def gradient(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        """With ``fuse_branches`` (MI/DI/TI/Logit-TI), both branches go through the model as one batch of
        ``2B`` (same transform draws, same value up to float rounding; faster for small batches)."""
        if not self._fusable():
            return super().gradient(x, delta, labels)
        assert self.state is not None
        delta = delta.detach().requires_grad_(True)
        self.state.delta = delta
        self.state.pass_index = 0
        clean = self.transform(self.perturb(x, delta))
        with self._noisy_branch():
            noisy = self.noisy_input(self.state.extra["x_tilde"], delta)
        z, z_tilde = self.forward(torch.cat([clean, noisy])).split([clean.shape[0], noisy.shape[0]])
        obj = self._ib_objective(z, z_tilde, labels)
        (g,) = torch.autograd.grad(obj, delta)
        return g

    def noisy_input(self, x_tilde: Tensor, delta: Tensor) -> Tensor:
        """Model input of the noisy branch: ``T'(clip(x~ + delta))`` (plus RAP's ``n``), fresh draws."""
        return self.transform(self.perturb(x_tilde, delta))

    def objective(self, z: Tensor, labels: Tensor, x: Tensor) -> Tensor:
        if not self.ib_active or self.state is None or "x_tilde" not in self.state.extra:
            return super().objective(z, labels, x)
        x_tilde = self.state.extra["x_tilde"]
        with self._noisy_branch():
            noisy = self.noisy_input(x_tilde, self.state.delta)
        return self._ib_objective(z, self.forward(noisy), labels)

    @contextlib.contextmanager
    def _noisy_branch(self) -> Iterator[None]:
        assert self.state is not None
        self.state.extra["noisy_branch"] = True
        try:
            yield
        finally:
            self.state.extra["noisy_branch"] = False

    def diversity(self, x: Tensor) -> Tensor:
        """DI; with ``shared_transform`` the noisy branch replays the clean branch's last draw."""
        if not self.shared_transform or self.state is None:
            return super().diversity(x)
        extra, gen = self.state.extra, self._gen()
        if not extra.get("noisy_branch"):
            extra["di_rng"] = gen.get_state() if gen is not None else torch.get_rng_state()
            return super().diversity(x)
        if "di_rng" not in extra:
            return super().diversity(x)
        with _replay_rng(gen, extra["di_rng"]):
            return super().diversity(x)

    def _ib_objective(self, z: Tensor, z_tilde: Tensor, labels: Tensor) -> Tensor:
        assert self.state is not None
        if z_tilde.shape != z.shape:
            raise ValueError(
                f"noisy branch logits {tuple(z_tilde.shape)} do not match clean logits {tuple(z.shape)}"
            )
        terms = ib_terms(
            z,
            z_tilde,
            repeat_labels(labels, z.shape[0]),
            self.targeted,
            gamma=self.gamma,
            lam=self.lam,
            base_loss=self.loss_fn,
            gamma_kl=self.gamma_kl,
        )
        self.last_stats.append(
            {"step": self.state.step, "pass": self.state.pass_index}
            | {k: float(v.detach()) for k, v in terms.items()}
        )
        return terms["objective"]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            attack=f"ibta_{type(self).base}",
            base=type(self).base,
            sigma=self.sigma,
            gamma=self.gamma,
            lam=self.lam,
            gamma_kl=self.gamma if self.gamma_kl is None else self.gamma_kl,
            shared_transform=self.shared_transform,
        )
        return d


class IBTA_MIFGSM(IBTAAttack, MIFGSM):
    """IBTA over MI-FGSM (``used_attacks.py:IBTA_MIFGSM``): identity transform, CE, 20 steps."""

    base = "mi"
    name = "ibta_mi"


class IBTA_DIFGSM(IBTAAttack, DIFGSM):
    """IBTA over DI-MI-FGSM (``used_attacks.py:IBTA_DIFGSM``): DI drawn independently on both branches
    (one shared draw with ``shared_transform``), CE, 20 steps."""

    base = "di"
    name = "ibta_di"


class IBTA_TIFGSM(IBTAAttack, TIFGSM):
    """IBTA over TI-DI-MI-FGSM (``used_attacks.py:IBTA_TIFGSM``): DI + 5x5 Gaussian TI smoothing, CE,
    20 steps."""

    base = "ti"
    name = "ibta_ti"


class IBTA_S2IFGSM(IBTAAttack, S2IMIFGSM):
    """IBTA over S2I-MI-FGSM (``used_attacks.py:IBTA_S2I_MIFGSM``): ``N`` spectrum copies per step, each
    with DI.

    Pass ``n`` of a step uses one spectrum draw ``(xi_n, M_n)`` on both branches:
    ``x_n = IDCT(DCT(x + xi_n) * M_n) + delta`` and ``x~_n = IDCT(DCT(x~ + xi_n) * M_n) + delta``
    (``ssa_mode="ibta_code"``, no clamp), each through its own DI draw; the per-pass gradients are
    L1-mean normalised and averaged, then accumulated by momentum. ``ssa_mode="ssa_paper"`` transforms
    ``clip(x + delta) + xi`` instead (straight-through gradient, as SSA's code).
    """

    base = "s2i"
    name = "ibta_s2i"

    def spectrum(self, x: Tensor) -> Tensor:
        # the same draws as spectrum_transform (noise, then mask), kept for the noisy branch
        gen = self._gen()
        dev = gen.device if gen is not None else x.device
        noise = (torch.randn(tuple(x.shape), generator=gen, device=dev, dtype=x.dtype) * self.sigma_spec).to(
            x.device
        )
        u = torch.rand(tuple(x.shape), generator=gen, device=dev, dtype=x.dtype)
        lo, hi = 1.0 - self.rho, 1.0 + self.rho
        mask = (u * (hi - lo) + lo).to(x.device)
        if self.state is not None:
            self.state.extra["spectrum_draw"] = (noise, mask)
        return spectrum_transform(x, self.rho, self.sigma_spec, noise=noise, mask=mask)

    @property
    def sigma_spec(self) -> float:
        """Spectrum-noise std (the shared SSA keeps it in ``self.sigma``; IBTA's ``sigma`` is x~'s)."""
        return self._ssa_sigma

    def noisy_input(self, x_tilde: Tensor, delta: Tensor) -> Tensor:
        assert self.state is not None
        noise, mask = self.state.extra["spectrum_draw"]
        if self.ssa_mode == "ibta_code":
            out = spectrum_transform(x_tilde, self.rho, self.sigma_spec, noise=noise, mask=mask) + delta
        else:
            xs = IterativeAttack.perturb(self, x_tilde, delta)
            spec = spectrum_transform(xs.detach(), self.rho, self.sigma_spec, noise=noise, mask=mask)
            out = (
                xs + (spec - xs.detach())
                if self.straight_through
                else spectrum_transform(xs, self.rho, self.sigma_spec, noise=noise, mask=mask)
            )
        return IterativeAttack.transform(self, out)


class IBTA_LogitTI(IBTAAttack, LogitAttack):
    """IBTA over Logit-TI (``used_attacks.py:IBTA_Logits_TI``): DI + TI, logit loss ``-mean z_c``,
    300 steps, normalised gradients."""

    base = "logit_ti"
    name = "ibta_logit_ti"


class IBTA_RAPLogitTI(IBTAAttack, RAPLogitTI):
    """IBTA over RAP-Logit-TI (``used_attacks.py:IBTA_RAP_Logits_TI``): from step ``rap_late_start`` on, one reverse step ``n`` on the
    clean branch (base logit objective, DI, TI, fresh momentum), then both branches use ``+ n``."""

    base = "rap_logit_ti"
    name = "ibta_rap_logit_ti"


_PRESET_BY_BASE: dict[str, type[IBTAAttack]] = {
    "mi": IBTA_MIFGSM,
    "di": IBTA_DIFGSM,
    "ti": IBTA_TIFGSM,
    "s2i": IBTA_S2IFGSM,
    "logit_ti": IBTA_LogitTI,
    "rap_logit_ti": IBTA_RAPLogitTI,
}
