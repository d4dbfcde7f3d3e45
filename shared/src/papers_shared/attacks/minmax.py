"""Min-max presets: the outer attack step is taken at a worst-case neighbour of the current point.

RAP / RAP-LS (Qin et al., NeurIPS 2022): an inner maximisation finds a reverse perturbation ``n``
and the outer step uses the gradient at ``x + delta + n``. Subclasses change the inner step by
overriding :meth:`RAP.reverse_perturbation` and :meth:`RAP.perturb` (the IBTA package ships the
IBTA official code's variant this way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import losses as L
from ._checks import check_eps, draw_uniform
from .engine import IterativeAttack, positive_int
from .registry import register_preset

__all__ = ["RAP"]


@register_preset("rap")
class RAP(IterativeAttack):
    """RAP / RAP-LS (Qin et al., "Boosting the Transferability of Adversarial Attacks with Reverse
    Adversarial Perturbation", NeurIPS 2022, Algorithm 1): min-max with a reverse perturbation ``n``.

    From step ``late_start`` on (RAP-LS, the paper's late-start variant; ``late_start=0`` is plain
    RAP) every outer step first finds ``n`` and then takes the gradient at ``x + delta + n``. The inner
    step follows the official RAP code: ``inner_steps`` PGD steps (random start, step
    ``alpha_n = eps_n / inner_steps``, bound ``eps_n = 16/255``, ``x + delta + n`` kept in [0, 1]) that
    raise the cross-entropy of the surrogate's current prediction, with no input transformation.
    """

    name = "rap"
    reference = "Qin et al., NeurIPS 2022"
    defaults = {"steps": 400, "mi": False}

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        late_start: int = 100,
        inner_steps: int = 8,
        eps_n: float = 16 / 255,
        alpha_n: float | None = None,
        inner_random_start: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, *args, **kwargs)
        self.late_start = positive_int(late_start, "late_start", minimum=0)
        self.inner_steps = positive_int(inner_steps, "inner_steps", minimum=0)
        self.eps_n = check_eps(eps_n, "eps_n")
        self.alpha_n = check_eps(self.default_alpha_n() if alpha_n is None else alpha_n, "alpha_n")
        self.inner_random_start = bool(inner_random_start)

    def default_alpha_n(self) -> float:
        """Inner step size when ``alpha_n`` is not given: ``eps_n / inner_steps`` (official RAP code)."""
        return self.eps_n / max(self.inner_steps, 1)

    def gradient(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        assert self.state is not None
        if self.state.step >= self.late_start and self.inner_steps > 0:
            self.state.extra["rap_n"] = self.reverse_perturbation(x, delta.detach(), labels)
        else:
            self.state.extra.pop("rap_n", None)
        return super().gradient(x, delta, labels)

    def reverse_n(self) -> Tensor | None:
        """The reverse perturbation of the current outer step (``None`` before ``late_start``)."""
        return self.state.extra.get("rap_n") if self.state is not None else None

    def perturb(self, x: Tensor, delta: Tensor) -> Tensor:
        n = self.reverse_n()
        return super().perturb(x, delta) if n is None else super().perturb(x, delta) + n

    def reverse_perturbation(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        """The inner maximisation: returns the (detached) reverse perturbation ``n``."""
        x0 = super().perturb(x, delta).detach()
        with torch.no_grad():
            pred = self.forward(x0).argmax(dim=1)
        if self.inner_random_start:
            n = draw_uniform(
                tuple(x.shape), -self.eps_n, self.eps_n, generator=self._gen(), device=x.device, dtype=x.dtype
            )
            n = torch.clamp(x0 + n, 0.0, 1.0) - x0
        else:
            n = torch.zeros_like(x)
        for _ in range(self.inner_steps):
            n = n.detach().requires_grad_(True)
            obj = L.ce(self.forward(x0 + n), pred, reduction="sum")
            (g,) = torch.autograd.grad(obj, n)
            n = torch.clamp(n.detach() + self.alpha_n * torch.sign(g), -self.eps_n, self.eps_n)
            n = torch.clamp(x0 + n, 0.0, 1.0) - x0
        return n.detach()
