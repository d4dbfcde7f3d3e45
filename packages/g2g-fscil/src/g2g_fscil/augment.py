"""Batched tensor augmentations for CAG2G views (spec §3.5): random resized crop (area scale in
``[scale_min, 1]``, aspect ratio in [3/4, 4/3]), horizontal flip and colour jitter, applied to a whole
batch at once with one affine grid (no per-image Python loop). Inputs are images in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_batch"]


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    scale_min: float = 0.6,
    hflip: bool = True,
    jitter: float = 0.4,
) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects [B, C, H, W], got {tuple(x.shape)}")
    b, c = x.shape[:2]
    dev, dt = x.device, x.dtype

    def u(lo: float, hi: float, n: int = b) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(dev, dt)

    area = u(scale_min, 1.0)
    log_r = u(math.log(3 / 4), math.log(4 / 3))
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    tx = (u(-1.0, 1.0)) * (1 - w)
    ty = (u(-1.0, 1.0)) * (1 - h)
    flip = torch.ones(b, device=dev, dtype=dt)
    if hflip:
        flip = torch.where(u(0.0, 1.0) < 0.5, -flip, flip)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=dt)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter > 0:
        bright = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        out = out * bright
        contrast = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean
        if c == 3:
            sat = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
            gray = (0.299 * out[:, :1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3]).expand_as(out)
            out = (out - gray) * sat + gray
        out = out.clamp(0.0, 1.0)
    return out
