"""Input-transformation presets: each forward pass sees a randomly transformed copy of the image.

DI (resize and pad), TI (translation invariance, applied as gradient smoothing), SI-NI (scale copies
at a Nesterov look-ahead), Admix (mixing in other images) and SSA / S2I (spectrum simulation). All run
on :class:`~.engine.IterativeAttack`; the transforms themselves live in :mod:`.ops`.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from ._checks import check_eps, check_images
from .engine import IterativeAttack, positive_int
from .ops import admix, scale_copies, spectrum_transform
from .registry import register_preset

__all__ = ["SSA", "TIFGSM", "Admix", "DIFGSM", "SINIFGSM"]


@register_preset("difgsm")
class DIFGSM(IterativeAttack):
    """DI-MI-FGSM (Xie et al., "Improving Transferability of Adversarial Examples with Input
    Diversity", CVPR 2019): random resize-and-pad with probability ``diversity_prob`` (0.7) before each
    forward pass.

    Momentum is on by default (the DI-MI combination of Xie et al.); ``mi=False`` gives DI2-FGSM.
    """

    name = "difgsm"
    reference = "Xie et al., CVPR 2019"
    defaults = {"di": True, "mi": True}


@register_preset("tifgsm")
class TIFGSM(IterativeAttack):
    """TI-DI-MI-FGSM (Dong et al., "Evading Defenses to Transferable Adversarial Examples by
    Translation-Invariant Attacks", CVPR 2019): the gradient is convolved with a Gaussian kernel.

    Defaults follow the transfer-attack code bases that use TI with DI and MI (a 5x5 kernel, nsig 3, as
    in the IBTA and Logit official code). The TI paper used larger kernels (up to 15x15) against
    defended models: pass ``ti_kernel=15``.
    """

    name = "tifgsm"
    reference = "Dong et al., CVPR 2019"
    defaults = {"ti": True, "di": True, "mi": True}


@register_preset("sinifgsm")
class SINIFGSM(IterativeAttack):
    """SI-NI-FGSM (Lin et al., "Nesterov Accelerated Gradient and Scale Invariance for Adversarial
    Attacks", ICLR 2020, Algorithm 1).

    Gradient at the Nesterov look-ahead ``x_adv + alpha * decay * m`` averaged over the scale copies
    ``x / 2^i``, ``i < num_scales`` (stacked in one pass). Paper defaults: eps 16/255, 10 steps,
    alpha = eps / 10, ``num_scales = 5``, ``decay = 1``.
    """

    name = "sinifgsm"
    reference = "Lin et al., ICLR 2020"
    defaults = {"alpha": 1.6 / 255, "mi": True}

    def __init__(self, model: nn.Module, *args: Any, num_scales: int = 5, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.num_scales = positive_int(num_scales, "num_scales")

    def transform(self, x: Tensor) -> Tensor:
        m = self.state.momentum if self.state is not None else None
        if m is not None:
            x = x + self.alpha * self.decay * m
        return super().transform(scale_copies(x, self.num_scales))


@register_preset("admix")
class Admix(IterativeAttack):
    """Admix (Wang et al., "Admix: Enhancing the Transferability of Adversarial Attacks", ICCV 2021).

    Gradient averaged over ``(x_adv + eta * x') / 2^i`` for ``m2`` images ``x'`` drawn from ``pool``
    (default: the current batch) and ``m1`` scales, on top of MI-FGSM. Paper defaults: ``m1 = 5``,
    ``m2 = 3``, ``eta = 0.2``, eps 16/255, 10 steps, alpha 1.6/255.
    """

    name = "admix"
    reference = "Wang et al., ICCV 2021"
    defaults = {"alpha": 1.6 / 255, "mi": True}

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        eta: float = 0.2,
        m1: int = 5,
        m2: int = 3,
        pool: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, *args, **kwargs)
        m1, m2 = positive_int(m1, "m1"), positive_int(m2, "m2")
        if pool is not None:
            pool = check_images(pool, "pool").detach()
        self.eta, self.m1, self.m2, self.pool = float(eta), int(m1), int(m2), pool

    def transform(self, x: Tensor) -> Tensor:
        return super().transform(admix(x, self.pool, self.eta, self.m1, self.m2, self._gen()))


@register_preset("ssa")
class SSA(IterativeAttack):
    """S2I-FGSM / SSA (Long et al., "Frequency Domain Model Augmentation for Adversarial Attack",
    ECCV 2022, Algorithm 1): gradient averaged over ``n_spectrum`` spectrum-simulated copies per step.

    Each copy is ``IDCT(DCT(x_adv + xi) * M)`` with ``xi ~ N(0, sigma^2)``, ``sigma = 16/255`` and
    ``M ~ U[1 - rho, 1 + rho]``. With ``straight_through=True`` the gradient is taken w.r.t. the
    transformed image (as in the official SSA code), with False it is back-propagated through the
    transform. ``copies_per_pass`` copies are stacked per forward pass (memory vs. speed). MI is on by
    default (S2I-MI-FGSM); ``mi=False`` gives plain S2I-FGSM. Subclasses change how the copies are made
    by overriding :meth:`simulate`.
    """

    name = "ssa"
    reference = "Long et al., ECCV 2022"
    defaults = {"alpha": 1.6 / 255, "mi": True}

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        n_spectrum: int = 20,
        rho: float = 0.5,
        sigma: float = 16 / 255,
        straight_through: bool = True,
        copies_per_pass: int = 1,
        **kwargs: Any,
    ) -> None:
        n_spectrum = positive_int(n_spectrum, "n_spectrum")
        copies_per_pass = positive_int(copies_per_pass, "copies_per_pass")
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        kwargs["passes"] = math.ceil(n_spectrum / copies_per_pass)
        super().__init__(model, *args, **kwargs)
        self.n_spectrum = n_spectrum
        self.copies_per_pass = copies_per_pass
        self.rho = float(rho)
        self.sigma = check_eps(sigma, "sigma")
        self.straight_through = bool(straight_through)

    def copies_in_pass(self, index: int) -> int:
        """Number of spectrum copies stacked in forward pass ``index``."""
        return min(self.copies_per_pass, self.n_spectrum - index * self.copies_per_pass)

    def spectrum(self, x: Tensor) -> Tensor:
        """One spectrum-simulation draw for every row of ``x``."""
        return spectrum_transform(x, self.rho, self.sigma, self._gen())

    def simulate(self, xs: Tensor, copies: int) -> Tensor:
        """The spectrum copies of ``xs`` (the adversarial images repeated ``copies`` times)."""
        if self.straight_through:
            return xs + (self.spectrum(xs.detach()) - xs.detach())
        return self.spectrum(xs)

    def transform(self, x: Tensor) -> Tensor:
        c = self.copies_in_pass(self.state.pass_index if self.state is not None else 0)
        xs = x.repeat(c, 1, 1, 1) if c > 1 else x
        return super().transform(self.simulate(xs, c))
