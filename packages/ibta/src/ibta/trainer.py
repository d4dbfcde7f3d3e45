"""The training loop of the offline digits models (the only models ``ibta`` trains; ours)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["train_classifier"]


def train_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int, seed: int
) -> nn.Module:
    """Adam + cross-entropy over ``epochs`` seeded shuffles of ``(x, y)``; returns the model frozen, in eval mode."""
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
