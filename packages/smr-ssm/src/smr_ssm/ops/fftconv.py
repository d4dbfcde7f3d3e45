"""Causal convolution with a long kernel via FFT (S4/S4D convolution mode, spec §2 and §3.6)."""

from __future__ import annotations

import torch

__all__ = ["causal_fft_conv", "direct_causal_conv", "fft_size"]


def fft_size(n: int) -> int:
    """Smallest power of two ``>= n`` (pocketfft's fastest sizes)."""
    return 1 << max(0, int(n - 1).bit_length())


def causal_fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """``y[..., h, l] = sum_{j<=l} k[h, j] u[..., h, l-j] (+ D[h] u[..., h, l])``.

    ``u``: ``(..., H, L)`` channels-first; ``k``: ``(H, Lk)`` (broadcastable against ``u``'s leading
    dims, e.g. ``(2, H, Lk)`` for two stacked directions). The product of the zero-padded spectra
    (size ``>= L + Lk - 1``) has no circular wrap-around, so the result is the exact linear causal
    convolution in ``O(L log L)``.
    """
    L, Lk = u.shape[-1], k.shape[-1]
    n = fft_size(L + Lk - 1)
    dtype = torch.promote_types(u.dtype, torch.float32)
    uf = torch.fft.rfft(u.to(dtype), n=n)
    kf = torch.fft.rfft(k.to(dtype), n=n)
    y = torch.fft.irfft(uf * kf, n=n)[..., :L]
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    return y.to(u.dtype)


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reference ``O(L * Lk)`` causal convolution with the same layout as :func:`causal_fft_conv`."""
    L, Lk = u.shape[-1], k.shape[-1]
    y = torch.zeros_like(u)
    for j in range(min(L, Lk)):
        y[..., j:] = y[..., j:] + k[..., j : j + 1] * u[..., : L - j]
    return y
