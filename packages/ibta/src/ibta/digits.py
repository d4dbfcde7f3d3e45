"""Offline stand-in for ImageNet (spec §8): sklearn digits as 3 x 32 x 32 images and tiny models.

Surrogate ``digits_cnn`` (:func:`small_cnn`, width 16, seed 0); victims ``digits_cnn_wide`` (width 24,
seed 1), ``digits_mlp`` (seed 2) and ``digits_ens`` (NormalizedLogitEnsemble of two small CNNs, seeds 3,
4). The default image size is 16 x 16 (spec §8 says 32 x 32; 16 keeps the quick run inside its 90 s budget
on two loaded cores; ``size=32`` works too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from papers_shared.attacks import NormalizedLogitEnsemble, tiny_mlp
from papers_shared.data import load_digits_tensors, stratified_split

from .config import DigitsConfig

__all__ = ["DIGITS_MODELS", "build_digits_model", "digits_data", "small_cnn", "train_classifier"]

DIGITS_MODELS = ("digits_cnn", "digits_cnn_wide", "digits_mlp", "digits_ens")


def small_cnn(num_classes: int = 10, width: int = 16, size: int = 16, seed: int | None = None) -> nn.Module:
    """Two conv-ReLU-maxpool blocks and a linear head on ``size x size`` RGB images [ours].

    (The shared ``tiny_cnn`` ends in global average pooling and reaches only ~72% on digits.)
    """
    if size % 4 != 0:
        raise ValueError(f"size must be a multiple of 4, got {size}")

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, num_classes),
        )

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def digits_data(cfg: DigitsConfig | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "test": (x, y)}``: digits upsampled to ``size`` (bilinear), 3 channels, in [0, 1]."""
    cfg = cfg or DigitsConfig()
    x, y = load_digits_tensors(size=cfg.size, channels=3)
    tr, te = stratified_split(y, test_frac=cfg.test_frac, seed=cfg.split_seed)
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


def train_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int, seed: int
) -> nn.Module:
    """Adam + cross-entropy, seeded shuffling; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval().requires_grad_(False)


def build_digits_model(
    name: str, data: dict | None = None, cfg: DigitsConfig | None = None, epochs: int | None = None
) -> nn.Module:
    """Train digits model ``name`` (one of :data:`DIGITS_MODELS`) on the training split."""
    cfg = cfg or DigitsConfig()
    data = data or digits_data(cfg)
    x, y = data["train"]
    ep = cfg.epochs if epochs is None else epochs

    def fit(m: nn.Module, seed: int) -> nn.Module:
        return train_classifier(m, x, y, ep, cfg.lr, cfg.batch_size, seed)

    if name == "digits_cnn":
        return fit(small_cnn(10, 16, cfg.size, seed=0), 0)
    if name == "digits_cnn_wide":
        return fit(small_cnn(10, 24, cfg.size, seed=1), 1)
    if name == "digits_mlp":
        return fit(tiny_mlp((3, cfg.size, cfg.size), 10, hidden=128, seed=2), 2)
    if name == "digits_ens":
        members = [fit(small_cnn(10, 16, cfg.size, seed=s), s) for s in (3, 4)]
        return NormalizedLogitEnsemble(members).eval()
    raise ValueError(f"unknown digits model {name!r}; choose one of {list(DIGITS_MODELS)}")
