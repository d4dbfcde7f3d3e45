"""The alternating (EM) update of memories and projections (paper: "EM strategy"; official
``models/onlinevt.py:Onlinevt.observe``, commit 8c8ad10)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["EMSchedule"]

#: ``closure(phase)`` returns the loss; ``phase`` is ``"memory"`` or ``"projection"``. A closure may use it
#: to skip gradients that the phase's optimizer never uses (features under ``no_grad`` in the memory
#: step, detached keys in the projection step): the optimizer's update is the same either way.
LossClosure = Callable[[str], torch.Tensor]


class EMSchedule:
    """Two optimizers stepped alternately.

    For ``batch_index < em_steps``: a ``memory_step`` (only the working memories move) followed by a
    ``projection_step`` (only the projector / CKT-MHA move), each on a fresh loss evaluation (fresh
    augmentation and replay draw). Afterwards: projection steps only, so a new class's memory is
    trained on the first ``em_steps`` batches of its task (per epoch in the code). ``em_steps=None``
    keeps both steps forever; ``em_steps=0`` never trains the memories (ablations).
    """

    def __init__(
        self,
        memory_opt: torch.optim.Optimizer,
        projection_opt: torch.optim.Optimizer,
        em_steps: int | None = 60,
    ) -> None:
        if em_steps is not None and em_steps < 0:
            raise ValueError(f"em_steps must be >= 0 or None, got {em_steps}")
        self.memory_opt = memory_opt
        self.projection_opt = projection_opt
        self.em_steps = em_steps

    def uses_memory_step(self, batch_index: int) -> bool:
        return self.em_steps is None or batch_index < self.em_steps

    @staticmethod
    def _run(opt: torch.optim.Optimizer, closure: LossClosure, phase: str) -> float:
        opt.zero_grad(set_to_none=True)
        loss = closure(phase)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite CL-vMF loss ({float(loss.detach())}) in the {phase} step")
        loss.backward()
        opt.step()
        return float(loss.detach())

    def memory_step(self, closure: LossClosure) -> float:
        """ "E-step" in our reading: update ``M'_c``, ``M'_t`` only."""
        return self._run(self.memory_opt, closure, "memory")

    def projection_step(self, closure: LossClosure) -> float:
        """ "M-step" in our reading: update the class projector and CKT-MHA only."""
        return self._run(self.projection_opt, closure, "projection")

    def step(self, closure: LossClosure, batch_index: int) -> dict[str, float]:
        """One training batch; returns the losses of the steps taken."""
        out = {}
        if self.uses_memory_step(batch_index):
            out["memory"] = self.memory_step(closure)
        out["projection"] = self.projection_step(closure)
        return out
