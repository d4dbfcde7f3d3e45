"""The training loops of the package, on ``torch.distributed`` (``papers_shared.distributed``).

One loop, :func:`fit`, serves every trained part (ours): the STM slot of a task (task LoRA + prototype
head, :func:`train_stm`), the LTM fine-tuning on replayed scenes (``restructure``), SeqLoRA and the warm-up
of a tiny random backbone (:func:`pretrain_backbone`). Under ``torchrun --nproc-per-node N`` (or
``accelerate launch``) the module is wrapped in DDP, each process reads ``global batch / N`` samples of
a ``DistributedSampler`` reseeded every epoch, and the logged loss is averaged over processes; in one
process the same code reads the same samples in the same order, so the result does not depend on the
number of processes (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from papers_shared.distributed import (
    make_sampler,
    on_main_process,
    per_rank_batch_size,
    reduce_mean,
    wrap_ddp,
)
from sr_cis.data import in_memory

__all__ = ["HeadOnFeatures", "batches", "fit", "pretrain_backbone", "train_stm"]


class HeadOnFeatures(nn.Module):
    """``head(small_model.features(x, adapter))`` as one module, the unit DDP wraps."""

    def __init__(self, small_model: nn.Module, head: nn.Module, adapter: str | None) -> None:
        super().__init__()
        self.small = small_model
        self.head = head
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.small.features(x, self.adapter))


def fit(
    module: nn.Module,
    dataset: Dataset,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    seed: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    progress: bool = False,
    desc: str = "train",
    num_workers: int = 0,
) -> list[float]:
    """Minimise ``loss_fn(model, batch)`` over ``epochs``; return the mean loss of each epoch.

    Trains the parameters of ``module`` that require grad. ``batch_size`` is the global batch (divided
    over the processes); ``seed`` fixes the sample order (reseeded per epoch); ``milestones`` are the
    epochs after which the learning rate is multiplied by ``gamma``.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params or epochs <= 0:
        return []
    model = wrap_ddp(module)
    opt = optimizer(params)
    sched = (
        torch.optim.lr_scheduler.MultiStepLR(opt, sorted(set(milestones)), gamma=gamma)
        if milestones
        else None
    )
    dataset = in_memory(dataset)
    sampler = make_sampler(dataset, shuffle=True, seed=seed)
    loader = batches(dataset, per_rank_batch_size(batch_size), sampler, num_workers)
    losses: list[float] = []
    module.train()
    bar = tqdm(range(epochs), desc=desc, disable=not on_main_process(progress), leave=False)
    for epoch in bar:
        sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in loader:
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
            total += float(loss.detach()) * n
            count += n
        if sched is not None:
            sched.step()
        losses.append(reduce_mean(total / max(count, 1), weight=count))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    module.eval()
    return losses


def batches(dataset: Dataset, batch_size: int, sampler=None, num_workers: int = 0):
    """Batches of ``dataset`` in ``sampler`` order (in order without one): tensors are indexed directly,
    other datasets go through a DataLoader."""
    if not isinstance(dataset, TensorDataset):
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)

    class _Batches:
        def __iter__(self):
            order = list(sampler) if sampler is not None else range(len(dataset))
            idx = torch.as_tensor(order, dtype=torch.long)
            for s in range(0, len(idx), batch_size):
                yield [t[idx[s : s + batch_size]] for t in dataset.tensors]

    return _Batches()


def train_stm(
    small_model,
    head: nn.Module,
    adapter: str,
    train: Dataset,
    local_label: torch.Tensor,
    cfg,
    *,
    seed: int,
    device: torch.device,
    progress: bool = False,
    num_workers: int = 0,
) -> list[float]:
    """Fit the STM slot ``adapter``: its LoRA (``cfg.train_lora``) and ``head`` (``cfg.train_head``) with
    cross-entropy over the task's own classes (``local_label`` maps global ids to head rows); Adam with
    ``cfg.lr`` stepped down by ``cfg.gamma`` at ``cfg.milestones`` (fractions of ``cfg.epochs``)."""
    small_model.freeze_all()
    if cfg.train_lora:
        small_model.set_adapter(adapter)
    for p in head.parameters():
        p.requires_grad_(cfg.train_head)
    miles = [max(1, int(round(m * cfg.epochs))) for m in cfg.milestones]
    module: nn.Module = HeadOnFeatures(small_model, head, adapter)
    if not cfg.train_lora and cfg.train_head and cfg.epochs > 0:
        # the features do not change: compute them once and train the head on them (same sample order)
        data = in_memory(train)
        with torch.no_grad():
            parts = [
                (small_model.features(xb.to(device), adapter).cpu(), yb) for xb, yb in batches(data, 256)
            ]
        train = TensorDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        module = head

    def loss_fn(model, batch):
        xb, yb = batch
        return F.cross_entropy(model(xb.to(device)), local_label[yb].to(device))

    losses = fit(
        module,
        train,
        loss_fn,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=lambda ps: torch.optim.Adam(ps, lr=cfg.lr, weight_decay=cfg.weight_decay),
        seed=seed,
        milestones=miles,
        gamma=cfg.gamma,
        progress=progress,
        desc=f"STM {adapter}",
        num_workers=num_workers,
    )
    small_model.freeze_all()
    for p in head.parameters():
        p.requires_grad_(False)
    return losses


def pretrain_backbone(
    small_model,
    train: Dataset,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Supervised warm-up of a tiny random backbone on a held-out split (stands in for pre-training,
    ours), then freeze it. Must run before any adapter is added."""
    from sr_cis.data import dataset_labels

    if small_model.adapters:
        raise ValueError("pre-train the backbone before adding adapters")
    if epochs <= 0:
        return []
    labels = dataset_labels(train)
    dev = next(small_model.backbone.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(small_model.dim, int(labels.max()) + 1).to(dev)
    for p in small_model.backbone.parameters():
        p.requires_grad_(True)
    module = HeadOnFeatures(small_model, head, None)

    def loss_fn(model, batch):
        xb, yb = batch
        return F.cross_entropy(model(xb.to(dev)), yb.to(dev))

    losses = fit(
        module,
        train,
        loss_fn,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=lambda ps: torch.optim.Adam(ps, lr=lr),
        seed=seed,
        progress=progress,
        desc="pre-train backbone",
    )
    small_model.backbone.eval()
    for p in small_model.backbone.parameters():
        p.requires_grad_(False)
    return losses
