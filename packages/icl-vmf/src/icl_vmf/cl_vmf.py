"""CL-vMF learning of ICL's System1: the CL-vMF loss on current and replay samples, optimised with the EM
schedule (paper Sec. 3, "CL-vMF"; official ``models/onlinevt.py:Onlinevt.observe`` and ``get_loss``,
commit 8c8ad10).

Per online batch (:meth:`ICLLearner.observe`): the batch enters the buffer first (so a replay draw can
include it, as the code), then for the first ``em_steps`` batches a memory step and a projection step
(:class:`icl_vmf.em.EMSchedule`), afterwards projection steps only; each loss evaluation redraws the
second view and the replay sample.

The replay term has two forms (``loss.mix_replay``):

* ``false`` (official, ``Onlinevt.get_loss``, ``with_brain_vit`` branch): ``L(S_cur) + w * L(S_buf)`` on
  two separate Set2Set matrices. A current sample is then only contrasted with the other labels of the
  current batch - with 2 classes per task, one other class - and never with an old class's memory.
* ``true`` (ours): one matrix over ``[current, replay]``, so every current sample is also pushed away from
  the memories of the replayed old classes, and every replayed sample from the current classes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from icl_vmf.em import EMSchedule
from icl_vmf.learner import Learner
from icl_vmf.losses import cl_vmf_loss
from icl_vmf.system1 import System1
from papers_shared import distributed as dist

__all__ = ["ICLLearner", "Set2SetObjective"]


class Set2SetObjective(nn.Module):
    """This process's share of the CL-vMF loss over one or more Set2Set matrices.

    ``forward(x_rows, labels, rows, weights, phase)``: ``x_rows`` are the images of this process's rows
    of every matrix, concatenated; ``labels[k]`` are matrix ``k``'s column labels (the whole batch) and
    ``rows[k]`` the indices of this process's rows in it. Returns ``sum_k weights[k] * L_k`` restricted to
    these rows, which is the whole loss with one process (``rows[k] = arange(n_k)``).
    """

    def __init__(self, system1: System1, loss) -> None:
        super().__init__()
        self.system1, self.loss = system1, loss

    def forward(self, x_rows, labels, rows, weights, phase: str, input_grad: bool = False) -> torch.Tensor:
        lc = self.loss
        enc = self.system1.encoder
        enc.input_grad = input_grad
        try:
            H = self.system1.features(x_rows)
        finally:
            enc.input_grad = False
        with torch.no_grad() if phase == "memory" else contextlib.nullcontext():
            z = self.system1.embed(H=H)  # one CKT-MHA pass for the rows of every matrix
        loss, start = 0.0, 0
        for j, (y, r, w) in enumerate(zip(labels, rows, weights)):
            zk = z[start : start + r.numel()]
            start += r.numel()
            S = self.system1.logits_from_embedding(zk, y, phase, rows=r)
            term = cl_vmf_loss(S, y, lc.kappa, lc.lmbda, lc.delta, lc.gamma, rows=r.to(S.device))
            loss = loss + (term if j == 0 else w * term)
        return loss


class ICLLearner(Learner):
    """ICL System1 trained online with CL-vMF, the EM schedule and class-balanced replay."""

    name = "icl"

    def __init__(
        self, system1: System1, cfg, device: torch.device, seed: int = 0, name: str = "icl", loss=None
    ) -> None:
        mem = system1.memory
        super().__init__(mem.num_classes, mem.classes_per_task, cfg, device, seed)
        self.name = name
        self.loss_cfg = loss if loss is not None else cfg.loss
        self.system1 = system1.to(self.device)
        objective = Set2SetObjective(self.system1, self.loss_cfg)
        # not a registered submodule: the state dict keeps one copy of System1's weights
        self.__dict__["objective"] = dist.wrap_ddp(
            objective, find_unused_parameters=True, broadcast_buffers=False
        )
        self.__dict__["local_objective"] = objective
        self._build_optimizers()

    def _build_optimizers(self) -> None:
        tc = self.cfg.train
        self.memory_opt = torch.optim.Adam(
            self.system1.memory.working_parameters(), lr=tc.lr, weight_decay=tc.weight_decay
        )
        self.projection_opt = torch.optim.Adam(
            self.system1.projection_parameters(), lr=tc.lr, weight_decay=tc.weight_decay
        )
        self.em = EMSchedule(self.memory_opt, self.projection_opt, tc.em_steps)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"memory": self.memory_opt, "projection": self.projection_opt}

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.system1.memory.set_current_task(t)
        self.system1.train()
        if self.cfg.train.reset_optimizers_each_task and t > 0:
            self._build_optimizers()
        self._task_batches = 0

    def _loss(
        self, x: torch.Tensor, y: torch.Tensor, phase: str, split: bool = True, input_grad: bool = False
    ):
        """CL-vMF on ``[x, aug(x)]`` plus (task >= 1, buffer not empty) a fresh replay draw and its view:
        two matrices (official) or one (``loss.mix_replay``). With ``split`` this process computes only
        its rows; the result is scaled so that DDP's gradient average equals the one-process gradient."""
        lc = self.loss_cfg
        mats = [self.with_second_view(x, y)]
        if self.task >= 1 and not self.buffer.is_empty():
            xb, yb = self.buffer.sample(self.cfg.train.minibatch_size, transform=self.replay_view)
            mats.append(self.with_second_view(xb.to(self.device), yb.to(self.device)))
        if lc.mix_replay and len(mats) == 2:
            mats = [(torch.cat([mats[0][0], mats[1][0]]), torch.cat([mats[0][1], mats[1][1]]))]
        rows = [self.my_rows(xm.shape[0], split) for xm, _ in mats]
        x_rows = torch.cat([xm[r.to(xm.device)] for (xm, _), r in zip(mats, rows)])
        weights = [1.0] + [lc.replay_weight] * (len(mats) - 1)
        objective = self.objective if split else self.local_objective
        loss = objective(x_rows, [ym for _, ym in mats], rows, weights, phase, input_grad)
        return loss * self.share_scale() if split and dist.world_size() > 1 else loss

    def _screen(self, x_raw: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """Gradient screening admission (official ``utils/buffer.py:Buffer.add_data_our``): per-sample mean
        over channels of the Frobenius norm of d loss / d input; admitted when below the class's running
        minimum. Every process scores the whole batch, so the buffers stay identical."""
        xg = x.detach().clone().requires_grad_(True)
        loss = self._loss(xg, y, "both", split=False, input_grad=True)
        (grad,) = torch.autograd.grad(loss, xg)
        norms = torch.linalg.matrix_norm(grad, ord="fro", dim=(2, 3)).mean(1)
        self.buffer.add(x_raw, y, scores=norms.detach().cpu())

    def observe(self, x_raw: torch.Tensor, y: torch.Tensor, batch_index: int) -> dict[str, float]:
        x_raw, y = x_raw.to(self.device), y.to(self.device)
        x = self.train_view(x_raw)
        if self.cfg.train.buffer_admission == "screening":
            self._screen(x_raw, x, y)
        else:
            self.buffer.add(x_raw, y)  # insertion precedes replay sampling (code)
        index = batch_index if self.cfg.train.em_index == "epoch" else self._task_batches
        self._task_batches += 1
        out = self.em.step(lambda phase: self._loss(x, y, phase), index)
        return {k: dist.reduce_mean(v) for k, v in out.items()} if dist.world_size() > 1 else out

    def end_task(self, t: int) -> None:
        self.system1.memory.consolidate(t)
        super().end_task(t)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.system1.eval()
        return self.system1.scores(x.to(self.device))
