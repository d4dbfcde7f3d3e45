"""Functional forms the SSM layers are built on: causal FFT convolution, the diagonal-SSM (Vandermonde)
kernel and diagonal linear recurrences, each with a direct reference used by the tests.

* :func:`causal_fft_conv` - ``y = k * u`` (causal, linear, not circular) in ``O(L log L)``: the
  convolution mode of time-invariant SSMs (Gu et al. 2022, S4, Sec. 3.3); :func:`direct_causal_conv` is
  its ``O(L Lk)`` reference.
* :func:`vandermonde_kernel` - ``K_l = sum_n coef_n exp(dtA_n l)``, the kernel of a diagonal SSM (Gu et
  al. 2022, "On the Parameterization and Initialization of Diagonal State Space Models" (S4D), Sec. 3).
* :func:`linear_scan` - all states of ``h_k = a_k * h_{k-1} + b_k`` (real or complex, differentiable):
  the recurrent mode of every diagonal SSM and the time-varying (per-step ``Delta_k``) case of S4D and S5
  (Smith et al. 2023, S5, Sec. 2.2 and Appendix H on the parallel scan).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "SCAN_MODES",
    "causal_fft_conv",
    "direct_causal_conv",
    "fft_size",
    "linear_scan",
    "vandermonde_kernel",
]

SCAN_MODES = ("chunked", "assoc", "loop")


def fft_size(n: int) -> int:
    """Smallest power of two ``>= n`` (pocketfft's fastest sizes)."""
    return 1 << max(0, int(n - 1).bit_length())


def causal_fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """``y[..., h, l] = sum_{j<=l} k[h, j] u[..., h, l-j] (+ D[h] u[..., h, l])``.

    ``u``: ``(..., H, L)`` channels-first; ``k``: ``(H, Lk)`` (broadcastable against ``u``'s leading
    dimensions, e.g. ``(2, H, Lk)`` for two stacked directions). The product of the zero-padded spectra
    (size ``>= L + Lk - 1``) has no circular wrap-around, so the result is the exact linear causal
    convolution.
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
    """Reference ``O(L * Lk)`` causal convolution with the layout of :func:`causal_fft_conv`."""
    L, Lk = u.shape[-1], k.shape[-1]
    y = torch.zeros_like(u)
    for j in range(min(L, Lk)):
        y[..., j:] = y[..., j:] + k[..., j : j + 1] * u[..., : L - j]
    return y


def vandermonde_kernel(
    coef: torch.Tensor, dtA: torch.Tensor, L: int, conj_pairs: bool = True
) -> torch.Tensor:
    """``K[..., l] = c Re sum_n coef[..., n] exp(dtA[..., n] l)`` for ``l < L``.

    ``c = 2`` with ``conj_pairs`` (complex modes whose conjugates are implied, as in S4D), ``c = 1``
    otherwise (real diagonal systems, or complex ones listed in full). The powers are split as
    ``l = q M + r`` (``M ~ sqrt(L)``), so only ``N (Q + M)`` exponentials are taken and the sum over ``n``
    is a batched ``(Q x N) @ (N x M)`` product instead of an ``(N, L)`` Vandermonde matrix (ours).
    ``coef``: ``(..., H, N)``; ``dtA``: broadcastable to it.
    """
    M = max(1, int(math.ceil(math.sqrt(L))))
    Q = -(-L // M)
    rdt = dtA.real.dtype if dtA.is_complex() else dtA.dtype
    r = torch.arange(M, device=dtA.device, dtype=rdt)
    q = torch.arange(Q, device=dtA.device, dtype=rdt) * M
    low = torch.exp(dtA.unsqueeze(-1) * r)  # (..., H, N, M)
    high = torch.exp(dtA.unsqueeze(-1) * q)  # (..., H, N, Q)
    coef, high = torch.broadcast_tensors(coef.unsqueeze(-1), high)
    k = torch.matmul((coef * high).transpose(-1, -2), low.expand(*high.shape[:-1], M))  # (..., H, Q, M)
    k = k.reshape(*k.shape[:-2], Q * M)[..., :L]
    if k.is_complex():
        k = k.real
    return 2.0 * k if conj_pairs else k


def _loop(a, b, h0):
    a = a.expand_as(b)
    h = h0 if h0 is not None else torch.zeros_like(b[:, 0])
    out = []
    for a_k, b_k in zip(a.unbind(1), b.unbind(1)):
        h = a_k * h + b_k
        out.append(h)
    return torch.stack(out, dim=1)


def _assoc(a, b, h0):
    a = a.expand_as(b)
    if h0 is not None:
        b = torch.cat([b[:, :1] + a[:, :1] * h0.unsqueeze(1), b[:, 1:]], dim=1)
    L = b.shape[1]
    off = 1
    while off < L:
        b = torch.cat([b[:, :off], a[:, off:] * b[:, :-off] + b[:, off:]], dim=1)
        a = torch.cat([a[:, :off], a[:, off:] * a[:, :-off]], dim=1)
        off *= 2
    return b


def _default_chunk(L: int) -> int:
    """A chunk length near ``sqrt(L)``, preferring an exact divisor of ``L`` (no padding)."""
    root = math.sqrt(L)
    divisors = [t for t in range(max(1, int(root / 2)), int(2 * root) + 1) if L % t == 0]
    if divisors:
        return min(divisors, key=lambda t: abs(t - root))
    return max(1, int(round(root)))


def _chunked(a, b, h0, chunk):
    """Two levels: ``T`` steps inside all chunks at once, then ``K = L / T`` steps across chunks.

    The per-step slices come from one ``unbind`` (whose backward is a single ``stack``), not from
    indexing, so the backward pass does not materialise a zero tensor of the full size per step.
    """
    Bsz, L = b.shape[:2]
    rest = b.shape[2:]
    T = chunk or _default_chunk(L)
    K = -(-L // T)
    a = a.expand_as(b)
    pad = K * T - L
    if pad:
        a = torch.cat([a, torch.ones_like(a[:, :1]).expand(Bsz, pad, *rest)], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1]).expand(Bsz, pad, *rest)], dim=1)
    a_t = a.reshape(Bsz, K, T, *rest).unbind(2)
    b_t = b.reshape(Bsz, K, T, *rest).unbind(2)
    h, p = b_t[0], a_t[0]
    hs, ps = [h], [p]
    for t in range(1, T):
        h = a_t[t] * h + b_t[t]
        p = a_t[t] * p
        hs.append(h)
        ps.append(p)
    h_end, p_end = h.unbind(1), p.unbind(1)
    carry = [h0 if h0 is not None else torch.zeros_like(h_end[0])]
    for k in range(K - 1):
        carry.append(h_end[k] + p_end[k] * carry[-1])
    hin = torch.stack(carry, dim=1).unsqueeze(2)  # (B, K, 1, ...)
    out = torch.stack(hs, dim=2) + torch.stack(ps, dim=2) * hin
    return out.reshape(Bsz, K * T, *rest)[:, :L]


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    mode: str = "chunked",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """All states of ``h_k = a_k * h_{k-1} + b_k`` (``h_{-1} = h0``, zeros by default).

    ``b``: ``(batch, L, ...)``; ``a`` broadcastable to ``b`` (e.g. ``(1, 1, P)`` for a time-invariant
    system); ``h0``: ``(batch, ...)``. Returns ``(batch, L, ...)`` in ``b``'s dtype (complex allowed).
    Modes, equal up to rounding: ``"loop"`` (one step per position, the reference), ``"assoc"``
    (Hillis-Steele associative scan of ``(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)``, ``ceil(log2 L)``
    levels) and ``"chunked"`` (default: ``T ~ sqrt(L)`` steps inside all chunks at once plus ``L / T``
    steps across chunk boundaries; it only multiplies the given factors, never divides).
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"unknown scan mode {mode!r}; valid: {list(SCAN_MODES)}")
    if b.ndim < 2:
        raise ValueError(f"b must be (batch, length, ...); got shape {tuple(b.shape)}")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as exc:
        raise ValueError(f"a {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}") from exc
    if h0 is not None and tuple(h0.shape) != (b.shape[0], *b.shape[2:]):
        raise ValueError(f"h0 must be {(b.shape[0], *b.shape[2:])}; got {tuple(h0.shape)}")
    if b.shape[1] == 0:
        return b
    if mode == "loop":
        return _loop(a, b, h0)
    if mode == "assoc":
        return _assoc(a, b, h0)
    return _chunked(a, b, h0, chunk_size)
