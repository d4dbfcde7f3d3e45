"""Batched per-sample augmentations in plain PyTorch (the official kornia view ``TRANSFORM_SC`` of
``datasets/seq_cifar10.py`` used in ``Onlinevt.get_loss``, and the buffer's train flip; commit 8c8ad10).

:class:`ViewAugment` draws the second view of every image used by the CL-vMF loss and by the baselines:
the code's kornia pipeline ``RandomResizedCrop(scale=(0.8, 1)) -> RandomRotation(30) ->
ColorJitter(0.4, 0.4, 0.2, 0.1) -> RandomGrayscale(0.2)`` with independent parameters per sample, written
with one ``affine_grid``/``grid_sample`` call for crop + rotation and closed-form colour operations, so
it runs on any device without kornia. :func:`random_hflip` is the train transform's horizontal flip.
Randomness comes from an explicit ``torch.Generator`` (CPU), so runs are reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ViewAugment", "adjust_hue", "random_hflip", "rgb_to_grayscale"]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``[B, C, H, W]`` left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` as ``[B, 1, H, W]``."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each image by ``shift`` (fraction of a turn, ``[B]``); exact RGB<->HSV."""
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    r, g, b = x.unbind(1)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r,
        ((g - b) / safe) % 6,
        torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    v = maxc
    h = (h + shift.view(-1, 1, 1).to(x.dtype)) % 1.0
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = (n + h * 6) % 6
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(out, 1)


class ViewAugment(nn.Module):
    """Per-sample RandomResizedCrop + RandomRotation + ColorJitter + RandomGrayscale on ``[B, 3, H, W]``.

    The crop keeps a fraction ``s ~ U(scale)`` of the area with aspect ratio ``log r ~ U(log ratio)``
    (clipped to the image), at a uniform position; the rotation angle is ``U(-degrees, degrees)``
    around the crop centre; both are applied by one bilinear resampling to the output size (the input
    size by default), zero padding outside. Colour jitter applies brightness, contrast, saturation and
    hue factors ``U(1 - b, 1 + b)`` ... ``U(-hue, hue)`` in that fixed order (kornia/torchvision draw a
    random order), clamping to [0, 1]; grayscale replaces an image by its luma with probability
    ``grayscale_p``. Set any strength to 0 to disable that part.
    """

    def __init__(
        self,
        size: int | None = None,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        degrees: float = 30.0,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
    ) -> None:
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0 <= hue <= 0.5 or min(brightness, contrast, saturation, degrees) < 0:
            raise ValueError("jitter strengths must be >= 0 and hue in [0, 0.5]")
        self.size, self.scale, self.ratio, self.degrees = size, scale, ratio, degrees
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.grayscale_p = grayscale_p

    def _geometry(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        B = x.shape[0]
        area = _uniform(B, *self.scale, g)
        logr = _uniform(B, math.log(self.ratio[0]), math.log(self.ratio[1]), g)
        r = torch.exp(logr)
        w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the width / height
        h = torch.sqrt(area / r).clamp(max=1.0)
        cx = (torch.rand(B, generator=g) * 2 - 1) * (1 - w)  # centre in normalised [-1, 1] coordinates
        cy = (torch.rand(B, generator=g) * 2 - 1) * (1 - h)
        ang = _uniform(B, -self.degrees, self.degrees, g) * math.pi / 180
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.stack(
            [torch.stack([w * cos, -w * sin, cx], 1), torch.stack([h * sin, h * cos, cy], 1)], 1
        ).to(x.device, x.dtype)
        H, W = (self.size, self.size) if self.size else x.shape[-2:]
        grid = F.affine_grid(theta, [B, x.shape[1], H, W], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _color(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        B = x.shape[0]

        def factor(strength: float) -> torch.Tensor:
            return (
                _uniform(B, max(0.0, 1 - strength), 1 + strength, g).to(x.device, x.dtype).view(-1, 1, 1, 1)
            )

        if self.brightness:
            x = (x * factor(self.brightness)).clamp(0, 1)
        if self.contrast:
            mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * factor(self.contrast) + mean).clamp(0, 1)
        if self.saturation:
            gray = rgb_to_grayscale(x)
            x = ((x - gray) * factor(self.saturation) + gray).clamp(0, 1)
        if self.hue:
            x = adjust_hue(x, _uniform(B, -self.hue, self.hue, g).to(x.device)).clamp(0, 1)
        if self.grayscale_p:
            gray = (torch.rand(B, generator=g) < self.grayscale_p).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(gray, rgb_to_grayscale(x).expand_as(x), x)
        return x

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
        return self._color(self._geometry(x, generator), generator)
