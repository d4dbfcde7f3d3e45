"""Data for ESMA: ImageNet subsets of the target classes (screening, stage 1, stage 2 and the 10-target
sub-source evaluation of the official ``Train_Gen/train.py`` / ``transfer_test.py``, gjq100/ESMA commit
eff2015) and the offline sklearn-digits stand-in. ImageNet folders are read through
:mod:`papers_shared.data`; missing folders raise :class:`~papers_shared.data.DatasetNotFoundError` naming
the path and how to get the data. :func:`screening_data`, :func:`train_data` and :func:`val_data` build
them from an :class:`~esma.config.EsmaExperimentConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from papers_shared.data import (
    DatasetNotFoundError,
    imagenet_subset,
    load_digits_tensors,
    standard_transform,
    stratified_split,
)

__all__ = [
    "digits_dataset",
    "digits_split",
    "class_images",
    "imagenet_screening_set",
    "imagenet_train_set",
    "imagenet_val_set",
    "screening_data",
    "train_data",
    "train_digits_classifier",
    "train_transform",
    "val_data",
]

_HOW = (
    "Download ImageNet-1k (ILSVRC2012) from image-net.org and lay it out as <root>/train/<wnid>/*.JPEG "
    "and <root>/val/<wnid>/*.JPEG (1000 class folders each, e.g. with the usual valprep.sh), then set "
    "imagenet_root=<root>."
)


def _check_root(root: str | Path, split: str) -> Path:
    path = Path(root).expanduser() / split
    if not path.is_dir():
        raise DatasetNotFoundError(f"ImageNet {split} split", path, _HOW)
    return path


def train_transform(image_size: int = 224, crop_scale: Sequence[float] = (0.8, 1.0), grayscale_p: float = 0.2,
                    erasing_p: float = 0.5):  # fmt: skip
    """Stage-2 augmentation (official ``train.py:train``): RandomResizedCrop(scale 0.8-1, ratio 3/4-4/3),
    flip, RandomGrayscale(0.2), ToTensor, RandomErasing(0.5, scale 0.03-0.33, ratio 0.3-3.3, value 0)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=(3 / 4, 4 / 3)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomGrayscale(p=grayscale_p),
            transforms.ToTensor(),
            transforms.RandomErasing(p=erasing_p, scale=(0.03, 0.33), ratio=(0.3, 3.3), value=0),
        ]
    )


def imagenet_screening_set(
    root: str | Path, class_ids: Sequence[int], resize: int = 256, crop: int = 224
) -> Dataset:
    """Training images of the target classes with the deterministic transform (screening, stage 1)."""
    _check_root(root, "train")
    return imagenet_subset(root, class_ids, split="train", transform=standard_transform(resize, crop))


def imagenet_train_set(root: str | Path, class_ids: Sequence[int], image_size: int = 224, **aug) -> Dataset:
    """Augmented training images of the target classes (stage 2); labels are ImageNet ids."""
    _check_root(root, "train")
    return imagenet_subset(root, class_ids, split="train", transform=train_transform(image_size, **aug))


def imagenet_val_set(
    root: str | Path, class_ids: Sequence[int], resize: int = 256, crop: int = 224
) -> Dataset:
    """Val images of the target classes (the 500 images of the sub-source protocol)."""
    _check_root(root, "val")
    return imagenet_subset(root, class_ids, split="val", transform=standard_transform(resize, crop))


def digits_split(size: int = 16, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """sklearn digits, 3 channels, ``size x size``, stratified 70/30 split (ours: the offline stand-in)."""
    x, y = load_digits_tensors(size=size, channels=3)
    tr, te = stratified_split(y, test_frac=0.3, seed=seed)
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


def train_digits_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Adam + CE on ``(x, y)``; returns the model frozen in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    model.requires_grad_(False)
    return model


def digits_dataset(split: str, size: int = 16) -> TensorDataset:
    d = digits_split(size)
    if split not in d:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return TensorDataset(*d[split])


def screening_data(cfg) -> Dataset:
    """Target-class training images with the deterministic transform (screening, stage-1 features)."""
    if cfg.dataset == "digits":
        return digits_dataset("train", cfg.digits_size)
    return imagenet_screening_set(cfg.imagenet_root, cfg.class_ids, cfg.resize, cfg.image_size)


def train_data(cfg) -> Dataset:
    """Stage-2 (and TTP) training images: augmented target-class ImageNet images, or digits."""
    if cfg.dataset == "digits":
        return digits_dataset("train", cfg.digits_size)
    t = cfg.train
    return imagenet_train_set(
        cfg.imagenet_root, cfg.class_ids, cfg.image_size,
        crop_scale=t.crop_scale, grayscale_p=t.grayscale_p, erasing_p=t.erasing_p,
    )  # fmt: skip


def val_data(cfg) -> Dataset:
    """Evaluation images: the val images of the target classes (sub-source protocol), or digits test."""
    if cfg.dataset == "digits":
        return digits_dataset("test", cfg.digits_size)
    return imagenet_val_set(cfg.imagenet_root, cfg.class_ids, cfg.resize, cfg.image_size)


def class_images(dataset: Dataset, class_id: int) -> Dataset:
    """The images of one class from a digits tensor dataset or an ImageNet subset (TTP's target images)."""
    from torch.utils.data import Subset

    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        return TensorDataset(x[y == class_id], y[y == class_id])
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    positions = getattr(dataset, "indices", range(len(dataset)))
    return Subset(base, [i for i in positions if base.samples[i][1] == class_id])
