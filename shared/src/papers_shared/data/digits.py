"""scikit-learn's bundled ``load_digits`` (1 797 real 8x8 grey images, 10 classes) as tensors.

This is the offline dataset of every quick reproduction: it ships inside scikit-learn, so it needs no
download. Images are scaled from 0..16 to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = ["digits_tensor_dataset", "load_digits_tensors", "stratified_split"]


def load_digits_tensors(
    size: int = 8, channels: int = 1, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)``: ``x`` float32 ``[1797, channels, size, size]`` in [0, 1], ``y`` int64 ``[1797]``.

    ``size > 8`` upsamples (bilinear by default, align_corners=False); ``channels`` is 1 or 3 (the grey
    image replicated).
    """
    from sklearn.datasets import load_digits

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 8:
        raise ValueError(f"size must be >= 8 (the native resolution), got {size}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(size, size), mode=mode, **kwargs).clamp_(0.0, 1.0)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return x.contiguous(), y


def stratified_split(
    y: torch.Tensor, test_frac: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of sample indices into ``(train_idx, test_idx)`` (disjoint, sorted)."""
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = max(1, round(test_frac * idx.numel()))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def digits_tensor_dataset(
    size: int = 32, channels: int = 3, split: str | None = None, test_frac: float = 0.3, seed: int = 0
) -> TensorDataset:
    """Digits as a ``TensorDataset``; ``split`` in {None, "train", "test"} uses :func:`stratified_split`."""
    x, y = load_digits_tensors(size=size, channels=channels)
    if split is None:
        return TensorDataset(x, y)
    if split not in ("train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    tr, te = stratified_split(y, test_frac=test_frac, seed=seed)
    idx = tr if split == "train" else te
    return TensorDataset(x[idx], y[idx])
