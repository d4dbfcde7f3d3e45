"""Data loaders: CIFAR-10/100 through ``papers_shared.data.cifar`` (the official augmentation and
normalisation; a clear ``DatasetNotFoundError`` when the files are absent), the bundled sklearn digits
(ours: the quick reproduction) and random tensors for smoke runs and benchmarks.

The loaders serve one process or each process of a ``torchrun`` / ``accelerate launch`` run (ours): the
training loader draws this process's share of a ``DistributedSampler`` permutation
(:func:`papers_shared.distributed.make_sampler`, also with one process, so a run's batches do not depend on
the process count) with ``batch_size / processes`` samples per step, and the test loader holds this
process's share of the test set (:func:`papers_shared.distributed.shard`; the trainer sums the counts).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from fsg_bnn.config import DataConfig
from papers_shared import distributed as pd
from papers_shared.data import cifar, load_digits_tensors, stratified_split

__all__ = ["CIFAR_NORMALIZATION", "digits_split", "make_loaders"]

#: Normalisation of the official code (two-tiger/FSG @ 9559b30 ``utils/dataset.py:get_dataloader``).
CIFAR_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def digits_split(
    seed: int = 0, offset: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits as flat 64-d vectors ``X/16 - offset`` with a 70/30 stratified split (ours)."""
    x, y = load_digits_tensors(size=8, channels=1)
    x = x.view(len(x), -1) - offset
    tr, te = stratified_split(y, test_frac=0.3, seed=seed)
    return x[tr], y[tr], x[te], y[te]


def _cifar_transforms(name: str, train: bool, augment: bool):
    from torchvision import transforms

    mean, std = CIFAR_NORMALIZATION[name]
    ops = (
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train and augment else []
    )
    return transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(mean, std)])


def make_loaders(cfg: DataConfig, num_classes: int = 10, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` of this process for ``cfg.dataset`` (``cfg.batch_size`` is the
    global batch; call ``train_loader.sampler.set_epoch(epoch)`` every epoch, as the trainer does)."""
    kw = {}
    if cfg.dataset in ("cifar10", "cifar100"):
        train_ds: Dataset = cifar(
            cfg.root, cfg.dataset, True, _cifar_transforms(cfg.dataset, True, cfg.augment), cfg.download
        )
        test_ds: Dataset = cifar(
            cfg.root, cfg.dataset, False, _cifar_transforms(cfg.dataset, False, False), cfg.download
        )
        kw = {"num_workers": cfg.num_workers, "pin_memory": torch.cuda.is_available()}
    elif cfg.dataset == "digits":
        xtr, ytr, xte, yte = digits_split(seed=0)
        train_ds, test_ds = TensorDataset(xtr, ytr), TensorDataset(xte, yte)
    elif cfg.dataset == "synthetic":
        gen = torch.Generator().manual_seed(seed)
        n = cfg.synthetic_size
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, num_classes, (n,), generator=gen)
        cut = max(1, int(0.8 * n))
        train_ds, test_ds = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; use cifar10, cifar100, digits or synthetic")
    sampler = pd.make_sampler(train_ds, shuffle=True, seed=seed)
    # the augmentation streams of the workers: from the seed, different on every process
    g = torch.Generator().manual_seed(seed * 1009 + pd.rank())
    if pd.world_size() > 1:
        test_ds = Subset(test_ds, pd.shard(range(len(test_ds))))
    return (
        DataLoader(train_ds, pd.per_rank_batch_size(cfg.batch_size), sampler=sampler, generator=g, **kw),
        DataLoader(test_ds, cfg.test_batch_size, shuffle=False, **kw),
    )
