"""Tensor operations used by transfer attacks.

All functions work on batches ``(N, C, H, W)`` of images in [0, 1] (or on gradients of the same
shape), are vectorised over the batch and are differentiable where that makes sense. Every
stochastic function takes an optional ``torch.Generator``; one random draw is shared by the whole
batch where the reference attack does so (DI).

Sources of the individual operations:

* projections: standard L-inf / L2 PGD projections; :func:`project_generated` is the
  ``min(max(u, x - eps), x + eps)`` then clamp used by TTP / ESMA generators (Naseer et al., ICCV 2021);
* :func:`gaussian_kernel`, :func:`ti_smooth`: TI-FGSM, Dong et al., CVPR 2019;
* :func:`generator_smoothing`: the 3x3 Gaussian applied after TTP / ESMA generators (Naseer et al., ICCV 2021);
* :func:`input_diversity`: DI-FGSM, Xie et al., CVPR 2019;
* :func:`scale_copies`: SI-FGSM, Lin et al., ICLR 2020;
* :func:`admix`: Admix, Wang et al., ICCV 2021;
* :func:`dct_2d`, :func:`idct_2d`, :func:`spectrum_transform`: SSA / S2I-FGSM, Long et al., ECCV 2022;
* :func:`l1_mean_normalize`, :func:`momentum_update`: MI-FGSM, Dong et al., CVPR 2018.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_eps, draw_normal, draw_uniform, randint

__all__ = [
    "GaussianSmoothing",
    "admix",
    "dct_2d",
    "gaussian_kernel",
    "generator_smoothing",
    "idct_2d",
    "input_diversity",
    "l1_mean_normalize",
    "momentum_update",
    "project_generated",
    "project_l2",
    "project_linf",
    "scale_copies",
    "spectrum_transform",
    "ti_smooth",
]


# --------------------------------------------------------------------------------------------
# projections
# --------------------------------------------------------------------------------------------


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project ``x_adv`` onto the L-inf ball of radius ``eps`` around ``x`` and the box [0, 1]."""
    eps = check_eps(eps)
    return torch.clamp(torch.clamp(x_adv, x - eps, x + eps), 0.0, 1.0)


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project ``x_adv`` onto the per-sample L2 ball of radius ``eps`` around ``x``, then onto [0, 1].

    Clamping to the box after the ball projection keeps the point inside the ball, because the
    box contains ``x`` and clamping moves every coordinate towards it.
    """
    eps = check_eps(eps)
    delta = x_adv - x
    norms = delta.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (delta.ndim - 1)))
    factor = torch.clamp(eps / norms.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)
    return torch.clamp(x + delta * factor, 0.0, 1.0)


def project_generated(u: Tensor, x: Tensor, eps: float) -> Tensor:
    """Projection used for generator outputs: ``clip(min(max(u, x - eps), x + eps), 0, 1)``."""
    eps = check_eps(eps)
    return torch.clamp(torch.min(torch.max(u, x - eps), x + eps), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# smoothing kernels
# --------------------------------------------------------------------------------------------


def gaussian_kernel(size: int = 5, nsig: float = 3.0, channels: int = 3) -> Tensor:
    """TI kernel: outer product of the standard-normal pdf on ``linspace(-nsig, nsig, size)``.

    Normalised to sum 1 and repeated for depthwise convolution: shape ``(channels, 1, size, size)``.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"kernel size must be a positive integer, got {size!r}")
    if not math.isfinite(nsig) or nsig <= 0:
        raise ValueError(f"nsig must be > 0, got {nsig!r}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels!r}")
    t = torch.linspace(-nsig, nsig, int(size), dtype=torch.float64)
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    k2 = torch.outer(pdf, pdf)
    k2 = k2 / k2.sum()
    return k2.to(torch.float32).expand(channels, 1, int(size), int(size)).contiguous()


def ti_smooth(grad: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise convolution of ``grad`` (N, C, H, W) with ``kernel`` (C or 1, 1, k, k), 'same' size.

    Zero padding at the borders, as in the reference TI implementations.
    """
    if grad.ndim != 4:
        raise ValueError(f"grad must have shape (N, C, H, W), got {tuple(grad.shape)}")
    if kernel.ndim != 4 or kernel.shape[1] != 1:
        raise ValueError(f"kernel must have shape (C, 1, k, k), got {tuple(kernel.shape)}")
    c = grad.shape[1]
    kernel = kernel.to(device=grad.device, dtype=grad.dtype)
    if kernel.shape[0] != c:
        kernel = kernel[:1].expand(c, 1, *kernel.shape[-2:])
    return F.conv2d(grad, kernel, padding="same", groups=c)


class GaussianSmoothing(nn.Module):
    """Fixed depthwise Gaussian blur with zero padding (no trainable parameters)."""

    kernel: Tensor

    def __init__(self, kernel_size: int = 3, sigma: float = 1.0, channels: int = 3) -> None:
        super().__init__()
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        k = int(kernel_size)
        coords = torch.arange(k, dtype=torch.float64) - (k - 1) / 2.0
        sq = coords[:, None] ** 2 + coords[None, :] ** 2
        kern = torch.exp(-sq / (2.0 * sigma**2))
        kern = (kern / kern.sum()).to(torch.float32)
        self.kernel_size = k
        self.sigma = float(sigma)
        self.channels = int(channels)
        self.register_buffer("kernel", kern.expand(channels, 1, k, k).contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (N, {self.channels}, H, W) input, got {tuple(x.shape)}")
        w = self.kernel.to(dtype=x.dtype, device=x.device)
        return F.conv2d(x, w, padding=self.kernel_size // 2, groups=self.channels)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}, channels={self.channels}"


def generator_smoothing(k: int = 3, sigma: float = 1.0, channels: int = 3) -> GaussianSmoothing:
    """The TTP / ESMA output smoothing: a ``k x k`` Gaussian (std ``sigma`` pixels), same-size output."""
    return GaussianSmoothing(kernel_size=k, sigma=sigma, channels=channels)


# --------------------------------------------------------------------------------------------
# input transformations
# --------------------------------------------------------------------------------------------


def input_diversity(
    x: Tensor,
    resize_rate: float = 0.9,
    prob: float = 0.7,
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """DI transform: with probability ``prob`` randomly resize and zero-pad, else return ``x``.

    ``resize_rate < 1``: resize to ``rnd`` drawn uniformly from ``[floor(rate*H), H)`` and zero-pad
    at a random offset back to ``H x W``. ``resize_rate > 1``: resize up to ``rnd`` in
    ``[H, int(rate*H))``, pad to ``int(rate*H)``, then resize back to ``H x W``. One draw per call,
    shared by the whole batch. The output always has the input's spatial size.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}")
    if not math.isfinite(resize_rate) or resize_rate <= 0:
        raise ValueError(f"resize_rate must be > 0, got {resize_rate!r}")
    if prob == 0.0 or resize_rate == 1.0:
        return x
    dev = generator.device if generator is not None else torch.device("cpu")
    if float(torch.rand((), generator=generator, device=dev)) >= prob:
        return x
    h, w = x.shape[-2:]
    align = None if mode in ("nearest", "area", "nearest-exact") else False
    if resize_rate < 1.0:
        low, high = int(math.floor(resize_rate * h)), h
        if low < 1 or low >= high:
            return x
        rnd_h = randint(low, high, generator)
        rnd_w = rnd_h if h == w else max(1, min(w - 1, round(rnd_h * w / h)))
        out_h, out_w = h, w
    else:
        out_h, out_w = int(resize_rate * h), int(resize_rate * w)
        if out_h <= h:
            return x
        rnd_h = randint(h, out_h, generator)
        rnd_w = rnd_h if h == w else max(w, min(out_w - 1, round(rnd_h * w / h)))
    resized = F.interpolate(x, size=(rnd_h, rnd_w), mode=mode, align_corners=align)
    rem_h, rem_w = out_h - rnd_h, out_w - rnd_w
    top = randint(0, rem_h, generator) if rem_h > 0 else 0
    left = randint(0, rem_w, generator) if rem_w > 0 else 0
    padded = F.pad(resized, (left, rem_w - left, top, rem_h - top), value=0.0)
    if (out_h, out_w) != (h, w):
        padded = F.interpolate(padded, size=(h, w), mode=mode, align_corners=align)
    return padded


def scale_copies(x: Tensor, m: int = 5) -> Tensor:
    """SI copies ``[x, x/2, ..., x/2^(m-1)]`` concatenated along the batch (copy-major order)."""
    if int(m) != m or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    return torch.cat([x / (2.0**i) for i in range(int(m))], dim=0)


def admix(
    x: Tensor,
    pool: Tensor | None = None,
    eta: float = 0.2,
    m1: int = 5,
    m2: int = 3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Admix copies: ``(x + eta * x') / 2^i`` for ``m2`` random ``x'`` from ``pool`` and ``i < m1``.

    ``pool`` defaults to the batch itself (as in the common re-implementations); the mixed-in images
    are detached. Output shape ``(m1 * m2 * N, C, H, W)``, copy-major, so labels repeat with period N.
    """
    if int(m2) != m2 or m2 < 1:
        raise ValueError(f"m2 must be a positive integer, got {m2!r}")
    if not math.isfinite(eta):
        raise ValueError(f"eta must be finite, got {eta!r}")
    src = (x if pool is None else pool).detach()
    if src.ndim != 4 or src.shape[1:] != x.shape[1:] or src.shape[0] < 1:
        raise ValueError(
            f"pool must have shape (P, {', '.join(map(str, x.shape[1:]))}), got {tuple(src.shape)}"
        )
    n = x.shape[0]
    dev = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randint(0, src.shape[0], (int(m2) * n,), generator=generator, device=dev).to(src.device)
    mixed = x.repeat(int(m2), 1, 1, 1) + eta * src[idx].to(x.device, x.dtype)
    return scale_copies(mixed, m1)


# --------------------------------------------------------------------------------------------
# spectrum transform (DCT)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _dct_matrices(n: int, norm: str | None, device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2.0 * j + 1.0) * k / (2.0 * n))  # C[k, j]
    f = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
    f[0] = math.sqrt(1.0 / n)
    ortho = f[:, None] * c
    if norm == "ortho":
        fwd, inv = ortho, ortho.T
    else:
        fwd, inv = 2.0 * c, c.T * (f * f)[None, :] / 2.0
    return fwd.to(device=device, dtype=dtype), inv.to(device=device, dtype=dtype)


def _check_norm(norm: str | None) -> None:
    if norm not in (None, "ortho"):
        raise ValueError(f"norm must be None or 'ortho', got {norm!r}")


def dct_2d(x: Tensor, norm: str | None = None) -> Tensor:
    """2-D DCT-II over the last two dimensions.

    ``norm=None`` is the un-normalised convention ``X_k = 2 * sum_n x_n cos(pi (2n+1) k / 2N)`` used
    by the SSA / IBTA code; ``norm="ortho"`` gives the orthonormal transform. Computed as two
    matrix products, so it is exact (no FFT re-ordering) and differentiable.
    """
    _check_norm(norm)
    if x.ndim < 2:
        raise ValueError("dct_2d needs at least two dimensions")
    h, w = x.shape[-2:]
    dh, _ = _dct_matrices(h, norm, str(x.device), x.dtype)
    dw, _ = _dct_matrices(w, norm, str(x.device), x.dtype)
    return dh @ x @ dw.T


def idct_2d(x: Tensor, norm: str | None = None) -> Tensor:
    """Exact inverse of :func:`dct_2d` with the same ``norm``."""
    _check_norm(norm)
    if x.ndim < 2:
        raise ValueError("idct_2d needs at least two dimensions")
    h, w = x.shape[-2:]
    _, ih = _dct_matrices(h, norm, str(x.device), x.dtype)
    _, iw = _dct_matrices(w, norm, str(x.device), x.dtype)
    return ih @ x @ iw.T


def spectrum_transform(
    x: Tensor,
    rho: float = 0.5,
    sigma: float = 16 / 255,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Spectrum simulation ``IDCT(DCT(x + xi) * M)`` with ``xi ~ N(0, sigma^2)``, ``M ~ U[1-rho, 1+rho]``.

    Pass ``noise`` / ``mask`` explicitly to reuse one draw on several inputs (the IBTA S2I variant
    applies the same draw to the clean and the noisy branch). No clamping, as in the reference code.
    The element-wise mask makes the result independent of the DCT normalisation convention.
    """
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho!r}")
    sigma = check_eps(sigma, "sigma")
    if noise is None:
        noise = draw_normal(tuple(x.shape), sigma, generator=generator, device=x.device, dtype=x.dtype)
    if mask is None:
        mask = draw_uniform(
            tuple(x.shape), 1.0 - rho, 1.0 + rho, generator=generator, device=x.device, dtype=x.dtype
        )
    return idct_2d(dct_2d(x + noise) * mask)


# --------------------------------------------------------------------------------------------
# gradient processing
# --------------------------------------------------------------------------------------------


def l1_mean_normalize(g: Tensor) -> Tensor:
    """``g / mean(|g|)`` per sample (mean over all non-batch dimensions); all-zero rows stay zero."""
    if g.ndim < 2:
        raise ValueError(f"expected a batched tensor, got shape {tuple(g.shape)}")
    scale = g.abs().mean(dim=tuple(range(1, g.ndim)), keepdim=True)
    return g / scale.clamp_min(torch.finfo(g.dtype).tiny)


def momentum_update(m: Tensor | None, g: Tensor, mu: float = 1.0) -> Tensor:
    """MI-FGSM accumulation ``mu * m + g`` (``m=None`` means an empty buffer)."""
    return g.clone() if m is None else mu * m + g
