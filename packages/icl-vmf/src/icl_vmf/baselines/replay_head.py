"""Linear-head baselines on the same stream runner, buffer, augmentation and online protocol as ICL.

* ``linear``: frozen ViT, mean-pooled tokens -> ``Linear(D, N)``, CE on the batch (and its second view),
  no replay: the lower bound that shows forgetting (ours).
* ``er``: the same head with class-balanced replay (CE on a replay draw and its view from task 1 on);
  isolates what the CL-vMF memories add (experience replay, Chaudhry et al. 2019; ours on this encoder).
* ``derpp``: ER + ``alpha * MSE(f(x_b), stored logits)`` + ``beta * CE`` on a second replay draw (DER++,
  Buzzega et al., NeurIPS 2020, cited by the paper); logits are stored at insertion, after the step.
* ``vit_finetune_er``: the official ``--vit_finetune`` reference (``models/onlinevt.py:Onlinevt.get_loss``,
  ``vit_finetune`` branch, commit 8c8ad10): trainable ViT + the mean-pooled linear head, CE on the batch
  + view, plus CE on a replay draw + view (task >= 1).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from icl_vmf.encoders import ViTEncoder
from icl_vmf.learner import Learner
from papers_shared import distributed as dist

__all__ = ["HeadObjective", "ReplayHeadLearner"]

BASELINES = ("linear", "er", "derpp", "vit_finetune_er")


class HeadObjective(nn.Module):
    """This process's share of the baselines' loss: ``sum_k w_k * loss_k`` over parts of the batch.

    ``parts[k] = (kind, target, rows, n, w)``: ``kind`` is ``"ce"`` (targets are labels) or ``"mse"``
    (targets are stored logits); ``rows`` are this process's rows of a part with ``n`` rows in all. With
    every row the terms are the usual means; with a share, sums divided by the part's full size.
    """

    def __init__(self, encoder: ViTEncoder, head: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))

    def forward(self, x_rows: torch.Tensor, parts: list) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.logits(x_rows)
        loss, start = 0.0, 0
        for j, (kind, target, rows, n, w) in enumerate(parts):
            o = out[start : start + rows.numel()]
            start += rows.numel()
            full = rows.numel() == n
            if kind == "ce":
                term = F.cross_entropy(o, target) if full else F.cross_entropy(o, target, reduction="sum") / n
            else:
                term = (
                    F.mse_loss(o, target)
                    if full
                    else F.mse_loss(o, target, reduction="sum") / (n * o.shape[1])
                )
            loss = loss + (term if j == 0 or w == 1.0 else w * term)
        return loss, out


class ReplayHeadLearner(Learner):
    """Mean-pooled ViT tokens -> linear head over all classes, trained with CE (+ replay variants)."""

    def __init__(
        self,
        method: str,
        encoder: ViTEncoder,
        num_classes: int,
        classes_per_task: int,
        cfg,
        device,
        seed: int = 0,
    ) -> None:
        if method not in BASELINES:
            raise ValueError(f"unknown baseline {method!r}; choose from {list(BASELINES)}")
        super().__init__(num_classes, classes_per_task, cfg, device, seed)
        self.name = method
        trainable = method == "vit_finetune_er"
        if trainable and not encoder.trainable:
            encoder = copy.deepcopy(encoder)
            encoder.trainable = True
            encoder.vit.requires_grad_(True)
            encoder.vit.train()
        if not trainable and encoder.trainable:
            raise ValueError(f"{method} needs a frozen encoder")
        self.encoder = encoder.to(self.device)
        self.head = nn.Linear(encoder.hidden_size, num_classes).to(self.device)
        params = list(self.head.parameters()) + (list(self.encoder.parameters()) if trainable else [])
        self.opt = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        objective = HeadObjective(self.encoder, self.head)
        self.__dict__["objective"] = dist.wrap_ddp(objective, broadcast_buffers=False)
        self.__dict__["local_objective"] = objective

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"head": self.opt}

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        if self.cfg.train.reset_optimizers_each_task and t > 0:
            self.opt = torch.optim.Adam(
                [p for p in self.parameters() if p.requires_grad],
                lr=self.cfg.train.lr,
                weight_decay=self.cfg.train.weight_decay,
            )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_objective.logits(x)

    def _views(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.with_second_view(x, y) if self.cfg.baselines.use_aug_view else (x, y)

    def _replay(self, with_logits: bool = False):
        out = self.buffer.sample(
            self.cfg.train.minibatch_size, transform=self.replay_view, with_logits=with_logits
        )
        return tuple(o.to(self.device) for o in out)

    def observe(self, x_raw: torch.Tensor, y: torch.Tensor, batch_index: int) -> dict[str, float]:
        x_raw, y = x_raw.to(self.device), y.to(self.device)
        x = self.train_view(x_raw)
        self.train()
        self.encoder.train()
        if self.name in ("er", "vit_finetune_er"):
            self.buffer.add(x_raw, y)
        bd = self.cfg.baselines
        batches = [(*self._views(x, y), "ce", 1.0)]
        if self.name in ("er", "vit_finetune_er") and self.task >= 1 and not self.buffer.is_empty():
            batches.append((*self._views(*self._replay()), "ce", 1.0))
        if self.name == "derpp" and not self.buffer.is_empty():
            xb1, _, lb1 = self._replay(with_logits=True)
            xb2, yb2 = self._replay()
            batches += [(xb1, lb1, "mse", bd.derpp_alpha), (xb2, yb2, "ce", bd.derpp_beta)]
        rows = [self.my_rows(b[0].shape[0]) for b in batches]
        x_rows = torch.cat([b[0][r.to(self.device)] for b, r in zip(batches, rows)])
        parts = [(k, t[r.to(self.device)], r, t.shape[0], w) for (_, t, k, w), r in zip(batches, rows)]
        self.opt.zero_grad(set_to_none=True)
        loss, out = self.objective(x_rows, parts)
        if dist.world_size() > 1:
            loss = loss * self.share_scale()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {self.name} loss ({float(loss.detach())})")
        loss.backward()
        self.opt.step()
        if self.name == "derpp":  # logits of the first view of the current batch, stored with it
            first = self.gather_rows_tensor(out[: rows[0].numel()].detach(), batches[0][0].shape[0])
            self.buffer.add(x_raw, y, logits=first[: x.shape[0]])
        value = float(loss.detach())
        return {"loss": dist.reduce_mean(value) if dist.world_size() > 1 else value}

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.eval()
        n = self.seen_classes
        if n == 0:
            raise RuntimeError("no task finished yet")
        ids = torch.arange(n, device=self.device)
        return self.logits(x.to(self.device))[:, :n], ids
