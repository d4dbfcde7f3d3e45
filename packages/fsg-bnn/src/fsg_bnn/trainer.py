"""One trainer for every method (STE, MetaQuant nets, FSG), so the comparison is fair (ours;
the official code has one script per family, ``meta-quantize.py`` and ``train_baseline_quant.py``).

The loop is the plain PyTorch one (``zero_grad``, forward, cross-entropy, ``backward``, ``step``): the
method lives entirely in the optimizer (:func:`fsg_bnn.build_optimizer`). Evaluation runs the model in
``eval`` mode, i.e. on the latent weights ``W`` without look-ahead (as the official evaluation). The LR is
multiplied by ``lr_gamma`` every ``lr_step`` epochs and training stops once it falls below ``min_lr``.

The same loop runs in one process and under ``torchrun`` / ``accelerate launch`` (ours; the official
code trains on one GPU): the model is wrapped in ``DistributedDataParallel``
(:func:`fsg_bnn.distributed.wrap_model`), the meta nets start from rank 0's weights, the loaders of
:func:`fsg_bnn.data.make_loaders` give each process its share (``DistributedSampler``, per-process batch
= global batch / processes, reseeded every epoch with ``set_epoch``), training and test metrics are
reduced over the processes, checkpoints are written by rank 0 and read by all on resume, and the progress
bar shows on rank 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsg_bnn.distributed import all_reduce_mean_, broadcast_meta_nets, sum_across_ranks, wrap_model
from papers_shared import distributed as pd
from papers_shared.checkpoints import CheckpointManager

__all__ = ["Trainer", "pretrain_fp"]


def _progress(it: Iterable, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


class Trainer:
    """Shared train / evaluate loop with LR steps, checkpoints and resume, in one process or several.

    ``model`` is the plain model (saved, evaluated); the training forward runs through :attr:`net`, its
    DDP wrapper when several processes run (``sync_bn``: SyncBatchNorm on CUDA, see
    :func:`~fsg_bnn.distributed.wrap_model`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: str | torch.device = "cpu",
        lr_step: int = 30,
        lr_gamma: float = 0.1,
        min_lr: float = 1e-6,
        max_steps: int | None = None,
        sync_bn: bool = True,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.net = wrap_model(model, self.device, sync_bn)
        broadcast_meta_nets(optimizer)
        self.lr_step, self.lr_gamma, self.min_lr = lr_step, lr_gamma, min_lr
        self.max_steps = max_steps
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One iteration; returns this process's batch loss and accuracy (of the look-ahead forward)."""
        self.net.train()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.net(x)
        loss = F.cross_entropy(out, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {loss.item()}")
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        acc = (out.detach().argmax(1) == y).float().mean().item() * 100.0
        return {"loss": float(loss.detach()), "acc": acc}

    def train_epoch(self, loader: Iterable, progress: bool = False) -> dict[str, Any]:
        """One pass over ``loader``; the loss of every step and the accuracy are those of the global batch
        (the mean over processes)."""
        losses, correct, total = [], 0.0, 0
        for x, y in _progress(loader, pd.on_main_process(progress), f"epoch {self.epoch}"):
            if self.max_steps is not None and self.global_step >= self.max_steps:
                break
            r = self.train_step(x, y)
            losses.append(r["loss"])
            correct += r["acc"] * len(y) / 100.0
            total += len(y)
        if losses:
            losses = all_reduce_mean_([torch.tensor(losses, dtype=torch.float64)])[0].tolist()
        correct, total = sum_across_ranks([correct, total])
        return {
            "train_loss": sum(losses) / max(1, len(losses)),
            "train_acc": 100.0 * correct / max(1, total),
            "train_loss_std": float(torch.tensor(losses).std()) if len(losses) > 1 else 0.0,
            "losses": losses,
        }

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Top-1 accuracy (%) and mean loss on the latent weights (``eval`` mode), over the whole test
        set: each process evaluates its share (:func:`fsg_bnn.data.make_loaders`) and the sums are
        reduced."""
        self.model.eval()
        loss_sum, correct, total = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            out = self.model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
        loss_sum, correct, total = sum_across_ranks([loss_sum, correct, total])
        if total == 0:
            raise ValueError("evaluation loader is empty")
        return {"test_loss": loss_sum / total, "test_acc": 100.0 * correct / total}

    def _schedule(self) -> bool:
        """Apply the step LR after an epoch; False once the LR is below ``min_lr`` (stop)."""
        if self.lr_step and self.epoch % self.lr_step == 0:
            for g in self.optimizer.param_groups:
                g["lr"] *= self.lr_gamma
        return self.lr >= self.min_lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])

    def fit(
        self,
        train_loader: Iterable,
        epochs: int,
        eval_loader: Iterable | None = None,
        checkpoints: CheckpointManager | None = None,
        resume: bool = False,
        checkpoint_every: int = 1,
        eval_every: int = 1,
        progress: bool = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Train up to ``epochs`` epochs (resuming from the newest checkpoint when ``resume``).

        Rank 0 writes the checkpoints; on resume every process reads the newest one. A loader whose
        sampler has ``set_epoch`` (a ``DistributedSampler``) gets a new permutation every epoch.
        """
        if resume and checkpoints is not None:
            pd.barrier()  # a checkpoint rank 0 is writing is complete before anyone reads
            state = checkpoints.load_latest(map_location=self.device)
            if state is not None:
                self.load_state_dict(state["trainer"])
        sampler = getattr(train_loader, "sampler", None)
        while self.epoch < epochs:
            if self.max_steps is not None and self.global_step >= self.max_steps:
                break
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            record: dict[str, Any] = {"epoch": self.epoch, "lr": self.lr}
            record.update(self.train_epoch(train_loader, progress))
            record.pop("losses")
            stats = getattr(self.optimizer, "stats", None)
            if stats:
                record.update(stats)
            self.epoch += 1
            if eval_loader is not None and (self.epoch % eval_every == 0 or self.epoch == epochs):
                record.update(self.evaluate(eval_loader))
            self.history.append(record)
            if callback is not None:
                callback(record)
            keep_going = self._schedule()
            save = self.epoch % checkpoint_every == 0 or self.epoch == epochs
            if checkpoints is not None and save and pd.is_main_process():
                checkpoints.save(self.epoch, {"trainer": self.state_dict(), **(extra_state or {})})
            if not keep_going or not math.isfinite(record["train_loss"]):
                break
        return self.history


def pretrain_fp(
    model: nn.Module,
    loader: Iterable,
    epochs: int,
    lr: float = 0.1,
    optimizer: str = "sgd-m",
    weight_decay: float = 5e-4,
    lr_step: int = 60,
    device: str | torch.device = "cpu",
    eval_loader: Iterable | None = None,
    checkpoints: CheckpointManager | None = None,
    resume: bool = False,
    progress: bool = False,
    sync_bn: bool = True,
) -> list[dict[str, Any]]:
    """Full-precision pretraining (the starting point of every binarized run; the
    official ``full_precision.py`` uses SGD-M lr 0.1, wd 5e-4); one process or several, as
    :class:`Trainer`."""
    if optimizer == "sgd-m":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
        )
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown pretraining optimizer {optimizer!r}; use 'sgd-m' or 'adam'")
    trainer = Trainer(model, opt, device, lr_step=lr_step, lr_gamma=0.1, min_lr=0.0, sync_bn=sync_bn)
    return trainer.fit(loader, epochs, eval_loader, checkpoints, resume=resume, progress=progress)
