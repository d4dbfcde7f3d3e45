"""Selective scan (Mamba-1 / S6) in pure PyTorch, with dispatch to mamba-ssm's CUDA kernel.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (Gu & Dao 2023, Alg. 2)::

    dt_s  = softplus(delta_s + delta_bias)            (if delta_softplus; else delta_s + delta_bias)
    h_s   = exp(dt_s * A[d, n]) * h_{s-1} + dt_s * B[n, s] * u_s
    y_s   = sum_n C[n, s] * h_s + D[d] * u_s;   y_s *= silu(z_s) if z is given

Signature and tensor layouts are those of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:
``u, delta: (b, d, l)``; ``A: (d, n)``; ``B, C: (b, n, l)``, grouped ``(b, g, n, l)`` or constant
``(d, n)``; ``D, delta_bias: (d,)``; ``z: (b, d, l)``.

Three implementations:

* :func:`selective_scan_ref`: the sequential loop (one step per position), the reference.
* :func:`selective_scan_chunked`: a two-level scan. The sequence is cut into chunks of ``T``; a loop
  over the ``T`` positions of all chunks at once gives each chunk's local states and decay products,
  a loop over the ``l/T`` chunk boundaries carries the states, and one fused update combines them.
  It needs ``T + l/T`` Python steps instead of ``l`` (``T ~ sqrt(l)``) and only multiplies decays in
  (0, 1]: no ``exp`` of a positive cumulative sum, so large ``delta`` cannot overflow or give NaN
  gradients.
* mamba-ssm's CUDA kernel, used by :func:`selective_scan` when it imports and every tensor is on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from papers_shared.device import kernel_available

__all__ = [
    "has_mamba_cuda",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]


def has_mamba_cuda() -> bool:
    """True when mamba-ssm's selective-scan CUDA kernel can be imported and CUDA is present."""
    return kernel_available("mamba_ssm")


def _check(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (b, d, l); got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, l = u.shape
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d={d}, n); got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported by the PyTorch selective scan; use a real A")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (
            (M.ndim == 2 and tuple(M.shape) == (d, n))
            or (M.ndim == 3 and tuple(M.shape) == (b, n, l))
            or (M.ndim == 4 and M.shape[0] == b and M.shape[2:] == (n, l) and d % M.shape[1] == 0)
        )
        if not ok:
            raise ValueError(
                f"{name} must be (d, n), (b, n, l) or (b, g, n, l) with d % g == 0; got {tuple(M.shape)} "
                f"for b={b}, d={d}, n={n}, l={l}"
            )
    if D is not None and tuple(D.shape) != (d,):
        raise ValueError(f"D must be (d={d},); got {tuple(D.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != (d,):
        raise ValueError(f"delta_bias must be (d={d},); got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must match u's shape {tuple(u.shape)}; got {tuple(z.shape)}")


def _expand_bc(M: torch.Tensor, b: int, d: int, l: int) -> torch.Tensor:
    """Return ``M`` broadcastable to ``(b, d, l, n)``."""
    if M.ndim == 2:  # (d, n): time-invariant
        return M[None, :, None, :]
    if M.ndim == 3:  # (b, n, l)
        return M.transpose(1, 2)[:, None, :, :]
    g = M.shape[1]  # (b, g, n, l) -> (b, d, l, n)
    return M.transpose(2, 3).repeat_interleave(d // g, dim=1)


def _prepare(u, delta, A, B, delta_bias, delta_softplus):
    dtype_in = u.dtype
    u, delta, A, B = u.float(), delta.float(), A.float(), B.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    dA = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])  # (b, d, l, n), in (0, 1] for A <= 0
    dBu = (delta * u).unsqueeze(-1) * _expand_bc(B, b, d, l)  # (b, d, l, n)
    return dtype_in, u, dA, dBu


def _finish(states, u, C, D, z, dtype_in):
    b, d, l = u.shape
    Cf = C.float()
    if Cf.ndim == 3:  # (b, n, l): contract n with a batched matmul instead of a broadcast product
        y = torch.einsum("bdln,bnl->bdl", states, Cf)
    else:
        y = (states * _expand_bc(Cf, b, d, l)).sum(-1)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Sequential reference: one recurrence step per position (mamba-ssm's reference algorithm)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in, uf, dA, dBu = _prepare(u, delta, A, B, delta_bias, delta_softplus)
    b, d, l, n = dA.shape
    h = dA.new_zeros(b, d, n)
    states = []
    for s in range(l):
        h = dA[:, :, s] * h + dBu[:, :, s]
        states.append(h)
    hs = torch.stack(states, dim=2)
    y = _finish(hs, uf, C, D, z, dtype_in)
    return (y, h) if return_last_state else y


def _default_chunk(l: int) -> int:
    """A chunk length near sqrt(l), preferring an exact divisor of l (no padding copy)."""
    r = max(1, int(round(math.sqrt(l))))
    for delta in range(0, r // 2 + 1):
        for t in (r + delta, r - delta):
            if 1 <= t <= l and l % t == 0:
                return t
    return r


def selective_scan_chunked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    chunk_size: int | None = None,
):
    """Two-level (chunked) selective scan; same results as :func:`selective_scan_ref` up to rounding.

    ``chunk_size`` defaults to about ``sqrt(l)`` (an exact divisor of ``l`` when one is close), which
    minimises the number of sequential steps.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in, uf, dA, dBu = _prepare(u, delta, A, B, delta_bias, delta_softplus)
    b, d, l, n = dA.shape
    T = chunk_size or _default_chunk(l)
    if T < 1:
        raise ValueError(f"chunk_size must be >= 1, got {T}")
    K = -(-l // T)
    pad = K * T - l
    if pad:
        dA = F.pad(dA, (0, 0, 0, pad), value=1.0)
        dBu = F.pad(dBu, (0, 0, 0, pad), value=0.0)
    # Level 1: local scan inside every chunk (zero initial state) and running decay products.
    # ``unbind`` (not indexing) keeps the backward pass linear in l.
    a_t = dA.view(b, d, K, T, n).unbind(3)
    x_t = dBu.view(b, d, K, T, n).unbind(3)
    h, p = x_t[0], a_t[0]
    hl, pl = [h], [p]
    for t in range(1, T):
        h = torch.addcmul(x_t[t], a_t[t], h)
        p = a_t[t] * p
        hl.append(h)
        pl.append(p)
    # Level 2: carry the state across chunk boundaries (state entering each chunk).
    h_end, p_end = h.unbind(2), p.unbind(2)
    carry = [h.new_zeros(b, d, n)]
    for k in range(K - 1):
        carry.append(torch.addcmul(h_end[k], p_end[k], carry[-1]))
    h0 = torch.stack(carry, dim=2).unsqueeze(3)  # (b, d, K, 1, n)
    # Level 3: combine local states with the carried-in state.
    states = torch.addcmul(torch.stack(hl, dim=3), torch.stack(pl, dim=3), h0)
    states = states.view(b, d, K * T, n)[:, :, :l]
    y = _finish(states, uf, C, D, z, dtype_in)
    if return_last_state:
        return y, states[:, :, -1]
    return y


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
):
    """Dispatching selective scan (drop-in for mamba-ssm's ``selective_scan_fn``).

    ``backend="auto"`` uses the CUDA kernel when mamba-ssm imports and all tensors are on CUDA, and the
    chunked PyTorch scan otherwise; ``"torch"`` forces the chunked scan, ``"ref"`` the sequential loop,
    ``"cuda"`` the kernel (a clear ``RuntimeError`` where it cannot run).
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend not in ("auto", "torch", "ref", "cuda"):
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch', 'ref' or 'cuda'")
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "cuda" or (backend == "auto" and on_cuda and not A.is_complex()):
        if backend == "cuda" and not on_cuda:
            raise RuntimeError("backend='cuda' needs every tensor on a CUDA device")
        if has_mamba_cuda():
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _check(u, delta, A, B, C, D, z, delta_bias)
            return selective_scan_fn(*args)
        if backend == "cuda":
            raise RuntimeError(
                "backend='cuda' needs mamba-ssm's CUDA kernel: install the package's `cuda` extra "
                "(mamba-ssm, causal-conv1d) on a machine with CUDA"
            )
    if backend == "ref":
        return selective_scan_ref(*args)
    return selective_scan_chunked(*args, chunk_size=chunk_size)
