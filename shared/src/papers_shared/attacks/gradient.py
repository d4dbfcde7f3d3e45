"""Gradient-family presets: how the step direction is built from the gradient.

I-FGSM (plain sign steps), MI-FGSM (momentum over L1-normalised gradients) and VMI-FGSM (momentum
plus a variance term from neighbouring points). All run on :class:`~.engine.IterativeAttack`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_eps, draw_uniform
from .engine import IterativeAttack, positive_int
from .registry import register_preset

__all__ = ["IFGSM", "MIFGSM", "VMIFGSM"]


@register_preset("ifgsm")
class IFGSM(IterativeAttack):
    """I-FGSM / BIM (Kurakin et al., "Adversarial examples in the physical world", ICLR-W 2017).

    Sign-gradient steps projected to the eps-ball, no momentum (the reference baseline).
    """

    name = "ifgsm"
    reference = "Kurakin et al., ICLR Workshop 2017"
    defaults = {"mi": False}


@register_preset("mifgsm")
class MIFGSM(IterativeAttack):
    """MI-FGSM (Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018, Algorithm 1).

    Momentum ``m <- mu * m + g / mean|g|`` with ``mu = decay``.
    """

    name = "mifgsm"
    reference = "Dong et al., CVPR 2018"
    defaults = {"mi": True}


@register_preset("vmifgsm")
class VMIFGSM(IterativeAttack):
    """VMI-FGSM (Wang and He, "Enhancing the Transferability of Adversarial Attacks through Variance
    Tuning", CVPR 2021, Algorithm 1).

    The step uses ``g(x_adv) + v`` where ``v`` is the previous step's variance term: the mean
    gradient at ``n_neighbors`` points ``x_adv + r``, ``r ~ U[-beta*eps, beta*eps]``, minus the
    gradient at ``x_adv``. Paper defaults: ``n_neighbors = 20``, ``beta = 1.5``, eps 16/255, 10 steps,
    alpha 1.6/255, ``decay = 1``.
    """

    name = "vmifgsm"
    reference = "Wang and He, CVPR 2021"
    defaults = {"alpha": 1.6 / 255, "mi": True}

    def __init__(
        self, model: nn.Module, *args: Any, n_neighbors: int = 20, beta: float = 1.5, **kwargs: Any
    ) -> None:
        super().__init__(model, *args, **kwargs)
        self.n_neighbors = positive_int(n_neighbors, "n_neighbors")
        self.beta = check_eps(beta, "beta")

    def setup(self, x: Tensor, labels: Tensor) -> None:
        if self.state is not None:
            self.state.extra["variance"] = torch.zeros_like(x)

    def gradient(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        assert self.state is not None
        g = super().gradient(x, delta, labels)
        radius = self.beta * self.eps
        neighbours = torch.zeros_like(g)
        for _ in range(self.n_neighbors):
            r = draw_uniform(
                tuple(x.shape), -radius, radius, generator=self._gen(), device=x.device, dtype=x.dtype
            )
            neighbours = neighbours + super().gradient(x, delta.detach() + r, labels)
        variance = self.state.extra["variance"]
        self.state.extra["variance"] = neighbours / self.n_neighbors - g
        return g + variance
