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

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from papers_shared.data import (
    DatasetNotFoundError,
    imagenet_subset,
    load_digits_tensors,
    nips17_dataset,
    standard_transform,
    stratified_split,
)

from .config import DigitsConfig, ExperimentConfig

__all__ = ["build_data", "digits_data"]


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


def build_data(cfg: ExperimentConfig, targeted: bool) -> tuple[Iterable[Any], str, list[int] | None]:
    """``(batches, protocol, targets)`` for one mode; raises DatasetNotFoundError when the data is absent."""
    if cfg.dataset == "digits":
        x, y = digits_data(cfg.digits)["test"]
        if cfg.max_images is not None:
            x, y = x[: cfg.max_images], y[: cfg.max_images]
        batches = [
            (x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)
        ]
        return batches, "all-source", (list(cfg.targets) if targeted else None)
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
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=0), protocol, targets
