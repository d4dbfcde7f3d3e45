"""Data of the ``ibta`` runs: the IBTA ImageNet-val subset, NIPS'17, and the offline digits stand-in.

* ImageNet: the 500 val images of the classes ``[31, 56, 241, 335, 458, 532, 712, 766, 887, 975]``
  (``transfer.py`` of the official code, commit 6866b7a: ``targets`` and ``advtest``), Resize 256 +
  CenterCrop 224; targeted runs use the sub-source protocol (per target, the other classes' images).
* NIPS'17: the 1000-image dev set with its per-image targets (an extra protocol, ours).
* digits (ours): sklearn's 8x8 digits, bilinearly upsampled to ``size x size`` and replicated to three
  channels, in [0, 1], with a stratified split; bundled with scikit-learn, so the quick reproduction
  runs offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from papers_shared.data import (
    DatasetNotFoundError,
    imagenet_subset,
    load_digits_tensors,
    nips17_dataset,
    standard_transform,
    stratified_split,
)

from .config import DigitsConfig, ExperimentConfig

__all__ = ["batch_blocks", "build_data", "digits_data", "load_batches"]


def digits_data(cfg: DigitsConfig | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "test": (x, y)}``: digits upsampled to ``size`` (bilinear), 3 channels, in [0, 1]."""
    cfg = cfg or DigitsConfig()
    x, y = load_digits_tensors(size=cfg.size, channels=3)
    tr, te = stratified_split(y, test_frac=cfg.test_frac, seed=cfg.split_seed)
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


class _Pairs(torch.utils.data.Dataset):
    """Drop the per-image target of NIPS'17 rows (untargeted runs)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.ds[i]
        return item[0], item[1]


def build_data(cfg: ExperimentConfig, targeted: bool) -> tuple[Dataset, str, list[int] | None]:
    """``(dataset, protocol, targets)`` for one mode; raises DatasetNotFoundError when the data is absent.

    Items are ``(image, label)`` (NIPS'17 targeted: ``(image, label, target)``); :func:`batch_blocks` and
    :func:`load_batches` cut the dataset into the run's batches.
    """
    if cfg.dataset == "digits":
        x, y = digits_data(cfg.digits)["test"]
        if cfg.max_images is not None:
            x, y = x[: cfg.max_images], y[: cfg.max_images]
        return TensorDataset(x, y), "all-source", (list(cfg.targets) if targeted else None)
    if cfg.dataset == "nips17":
        ds = nips17_dataset(cfg.data_root, transform=standard_transform(256, 224))
        if not targeted:
            ds = _Pairs(ds)
        protocol, targets = "nips17", None
    else:
        root = Path(cfg.data_root).expanduser()
        if not (root / cfg.split).is_dir():
            raise DatasetNotFoundError(
                "ImageNet-1k",
                root / cfg.split,
                f"IBTA attacks the ImageNet {cfg.split} images of classes {cfg.class_ids}. Put the standard "
                "sorted-synset layout <root>/<split>/<wnid>/*.JPEG there (e.g. from image-net.org) and set "
                "data_root=<root>.",
            )
        ds = imagenet_subset(root, cfg.class_ids, cfg.split, transform=standard_transform(256, 224))
        protocol, targets = "ibta-sub-source", (list(cfg.targets) if targeted else None)
    if cfg.max_images is not None:
        ds = Subset(ds, list(range(min(cfg.max_images, len(ds)))))
    return ds, protocol, targets


def batch_blocks(n: int, batch_size: int) -> list[list[int]]:
    """The run's batches as index lists: ``[0, B), [B, 2B), ...`` (fixed by the global batch size)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def load_batches(ds: Dataset, blocks: list[list[int]]) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches ``blocks`` of ``ds``, in order (a process of a sharded run loads only its own)."""
    if not blocks:
        return
    loader = DataLoader(Subset(ds, [i for b in blocks for i in b]), batch_size=len(blocks[0]), shuffle=False)
    sizes = iter(len(b) for b in blocks)
    for batch in loader:
        if len(batch[0]) != next(sizes):
            raise RuntimeError("a batch block other than the last is shorter than the batch size")
        yield tuple(batch)
