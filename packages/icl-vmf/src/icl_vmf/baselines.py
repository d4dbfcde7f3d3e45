"""Baselines of spec §4 on the same stream runner, buffer, augmentation and online protocol as ICL.

* ``linear``: frozen ViT, mean-pooled tokens -> ``Linear(D, N)``, CE on the batch (and its second view),
  no replay: the lower bound that shows forgetting.
* ``er``: the same head with class-balanced replay (CE on a replay draw and its view from task 1 on);
  isolates what the CL-vMF memories add.
* ``derpp``: ER + ``alpha * MSE(f(x_b), stored logits)`` + ``beta * CE`` on a second replay draw (DER++,
  Buzzega et al. 2020); logits are stored at insertion, after the step.
* ``vit_finetune_er``: the code's ``--vit_finetune`` reference: trainable ViT + the mean-pooled linear head,
  CE on the batch + view, plus CE on a replay draw + view (task >= 1).
* :func:`system2_zero_shot`: the MLLM alone over all class names, unparseable answers count as wrong.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from icl_vmf.data import StreamData, iterate_batches
from icl_vmf.encoders import ViTEncoder
from icl_vmf.system2 import System2
from icl_vmf.trainer import Learner

__all__ = ["ReplayHeadLearner", "build_learner", "system2_zero_shot"]


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
        if method not in ("linear", "er", "derpp", "vit_finetune_er"):
            raise ValueError(f"unknown baseline {method!r}")
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
        return self.head(self.encoder(x).mean(dim=1))

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
        xa, ya = self._views(x, y)
        replay = []
        if self.name in ("er", "vit_finetune_er") and self.task >= 1 and not self.buffer.is_empty():
            replay.append(self._views(*self._replay()))
        bd = self.cfg.baselines
        self.opt.zero_grad(set_to_none=True)
        sizes = [xa.shape[0]] + [r[0].shape[0] for r in replay]
        derpp = self.name == "derpp" and not self.buffer.is_empty()
        if derpp:
            xb1, _, lb1 = self._replay(with_logits=True)
            xb2, yb2 = self._replay()
            sizes += [xb1.shape[0], xb2.shape[0]]
        batch = torch.cat([xa] + [r[0] for r in replay] + ([xb1, xb2] if derpp else []))
        out = self.logits(batch).split(sizes)
        loss = F.cross_entropy(out[0], ya)
        for r, o in zip(replay, out[1 : 1 + len(replay)]):
            loss = loss + F.cross_entropy(o, r[1])
        if derpp:
            loss = (
                loss
                + bd.derpp_alpha * F.mse_loss(out[-2], lb1)
                + bd.derpp_beta * F.cross_entropy(out[-1], yb2)
            )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {self.name} loss ({float(loss.detach())})")
        loss.backward()
        self.opt.step()
        if self.name == "derpp":
            self.buffer.add(x_raw, y, logits=out[0][: x.shape[0]].detach())
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.eval()
        n = self.seen_classes
        if n == 0:
            raise RuntimeError("no task finished yet")
        ids = torch.arange(n, device=self.device)
        return self.logits(x.to(self.device))[:, :n], ids


def build_learner(method: str, cfg, data: StreamData, encoder: ViTEncoder, device, seed: int = 0) -> Learner:
    """The learner of ``method`` ("icl" or a baseline) on ``encoder`` for the stream ``data``."""
    if method == "icl":
        from icl_vmf.system1 import build_system1
        from icl_vmf.trainer import ICLLearner

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            system1 = build_system1(cfg.system1, data.num_classes, data.num_tasks, encoder=encoder)
        return ICLLearner(system1, cfg, device, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReplayHeadLearner(method, encoder, data.num_classes, data.classes_per_task, cfg, device, seed)


@torch.no_grad()
def system2_zero_shot(
    system2: System2, data: StreamData, batch_size: int = 8, max_per_task: int = 0
) -> dict[str, float]:
    """ "System2 alone" (spec §4.4): every test image with **all** class names as candidates; an answer
    that maps to no single class counts as wrong. Returns accuracy and the parsed fraction."""
    n = correct = parsed = 0
    names = list(data.class_names)
    for test in data.test_sets:
        seen = 0
        for x, y in iterate_batches(test, batch_size, shuffle=False):
            if max_per_task and seen >= max_per_task:
                break
            x, y = (
                x[: max_per_task - seen] if max_per_task else x,
                y[: max_per_task - seen] if max_per_task else y,
            )
            seen += y.numel()
            out = system2.choose([im for im in x], [names] * len(y), [names[int(c)] for c in y])
            for c, t in zip(out.choices, y.tolist()):
                n += 1
                parsed += c is not None
                correct += c is not None and c == t
    return {
        "accuracy": correct / n if n else float("nan"),
        "parsed_fraction": parsed / n if n else float("nan"),
        "n": n,
    }
