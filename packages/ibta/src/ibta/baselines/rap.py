"""RAP-LS over Logit-TI as the IBTA official code runs it (the baseline X of IBTA-RAP-Logit-TI).

``used_attacks.py:IBTA_RAP_Logits_TI.forward`` (Biqing-Qi/Enhancing-Adversarial-Transferability-via-
Information-Bottleneck-Constraints, commit 6866b7a) differs from the official RAP code (Qin et al.,
NeurIPS 2022; the shared :class:`papers_shared.attacks.RAP`) in its inner step: from iteration
``k_ls = 100`` on, ONE step from ``n = 0`` that lowers the attack's own logit objective on
``clip(x + delta + n)`` with DI, TI, L1-mean normalisation and a fresh momentum, step ``alpha`` and
bound ``epsilon_n = 12`` (unscaled, so it never binds after one step); the outer step then uses
``clip(x + delta + n)``. Logit loss, DI + TI + MI, 400 steps, alpha 1.25/255, and ``delta`` only
eps-clipped (``clip_delta=False``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from papers_shared.attacks import RAP

__all__ = ["RAPIBTA", "RAPLogitTI"]


class RAPLogitTI(RAP):
    """RAP-LS in the IBTA-code setting: one reverse inner step on the outer objective (see module doc).

    Defaults: logit loss, DI + TI + MI, 400 steps, late start 100, alpha 1.25/255, ``inner_steps=1``,
    ``alpha_n = alpha``, ``eps_n = 12/255`` (the code's unscaled 12 gives the same result after one
    step; pass ``eps_n=12.0`` for the literal value), no inner random start, ``clip_delta=False``.
    With ``inner_steps > 1`` the inner loop keeps its own momentum across its steps.
    """

    name = "rap_logit_ti_ibta_code"
    reference = "Qin et al., NeurIPS 2022, as run by the IBTA official code"
    defaults = {"alpha": 1.25 / 255, "loss": "logit", "di": True, "ti": True, "mi": True, "clip_delta": False}

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        inner_steps: int = 1,
        eps_n: float = 12 / 255,
        inner_random_start: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            *args,
            inner_steps=inner_steps,
            eps_n=eps_n,
            inner_random_start=inner_random_start,
            **kwargs,
        )

    def default_alpha_n(self) -> float:
        """The code steps ``n`` with the outer step size ``alpha``."""
        return self.alpha

    def perturb(self, x: Tensor, delta: Tensor) -> Tensor:
        n = self.reverse_n()
        if n is None:
            return super().perturb(x, delta)
        return torch.clamp(x + delta + n, 0.0, 1.0)

    def reverse_perturbation(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        """``inner_steps`` sign steps on ``n`` that ascend the negated base objective (see module doc)."""
        if self.inner_random_start:
            gen = self._gen()
            u = torch.rand(
                tuple(x.shape), generator=gen, device=gen.device if gen else x.device, dtype=x.dtype
            )
            n = (u * (2 * self.eps_n) - self.eps_n).to(x.device)
        else:
            n = torch.zeros_like(x)
        m: Tensor | None = None
        for _ in range(self.inner_steps):
            n = n.detach().requires_grad_(True)
            x_in = self.transform(torch.clamp(x + delta + n, 0.0, 1.0))
            obj = -self.base_objective(self.forward(x_in), labels, x_in)
            (g,) = torch.autograd.grad(obj, n)
            m = self.accumulate(m, self.grad_transform(g))
            n = torch.clamp(n.detach() + self.alpha_n * torch.sign(m), -self.eps_n, self.eps_n)
        return n.detach()


#: The name this class had in ``papers_shared.attacks`` before it moved into the IBTA package.
RAPIBTA = RAPLogitTI
