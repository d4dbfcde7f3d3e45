"""Input validation and small random-number helpers shared by the attack modules."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_eps",
    "check_images",
    "check_labels",
    "draw_normal",
    "draw_uniform",
    "randint",
]


def check_images(images: object, name: str = "images") -> Tensor:
    """Check that ``images`` is a float tensor (N, C, H, W) with finite values in [0, 1]."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor with values in [0, 1], got dtype {images.dtype}")
    if images.numel() == 0:
        return images
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contain NaN or inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (attacks work on un-normalised images; normalisation belongs "
            f"inside the model wrapper), got range [{lo:.4g}, {hi:.4g}]"
        )
    return images


def check_labels(labels: object, n: int, device: torch.device, name: str = "labels") -> Tensor:
    """Return ``labels`` as a 1-D int64 tensor of length ``n`` on ``device`` (an int is broadcast)."""
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.long)
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or an int, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be non-negative class ids, got min {int(labels.min())}")
    return labels.to(device=device, dtype=torch.long)


def check_eps(value: float, name: str = "eps") -> float:
    """Check a non-negative finite budget-like scalar."""
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def draw_uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Uniform samples in [low, high), drawn on the generator's device and moved to ``device``."""
    u = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return (u * (high - low) + low).to(device)


def draw_normal(
    shape: tuple[int, ...],
    std: float,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Centred Gaussian samples with standard deviation ``std``."""
    z = torch.randn(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return (z * std).to(device)


def randint(low: int, high: int, generator: torch.Generator | None = None) -> int:
    """One integer in [low, high) (``high`` exclusive, like ``torch.randint``)."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(low, high, (1,), generator=generator, device=dev).item())
