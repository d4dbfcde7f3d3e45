"""The noisy companion input of IBTA (``used_attacks.py``, commit 6866b7a: ``clean_images_shifted``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["noisy_companion"]


def noisy_companion(x: Tensor, sigma: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """``x~ = clip(x + sigma * xi, 0, 1)`` with ``xi ~ N(0, I)`` of the shape of ``x``.

    ``sigma`` is in [0, 1] pixel units (0.1 ~ 25.5/255). The attack draws it once per call and keeps
    it for all iterations. ``generator`` may live on another device than ``x`` (the draw is moved).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating torch.Tensor")
    s = float(sigma)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    dev = generator.device if generator is not None else x.device
    xi = torch.randn(tuple(x.shape), generator=generator, device=dev, dtype=x.dtype).to(x.device)
    return torch.clamp(x + s * xi, 0.0, 1.0)
