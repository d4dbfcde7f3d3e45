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
* :func:`selective_scan_chunked`: a two-level scan in a custom autograd function. The sequence is
  cut into chunks of ``T``; a loop over the ``T`` positions of all chunks at once gives each chunk's
  local states, a loop over the ``l/T`` chunk boundaries carries the states, and a second pass over
  the ``T`` positions yields the outputs. ``exp(dt A)`` is recomputed per step, so no ``(b, d, l, n)``
  tensor is stored; the backward pass is a hand-written reverse (adjoint) scan with the same
  two-level structure. It needs ``O(T + l/T)`` Python steps instead of ``l`` (``T ~ sqrt(l)``) and
  only multiplies decays in (0, 1]: no ``exp`` of a positive cumulative sum, so large ``delta``
  cannot overflow or give NaN gradients.
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
    cd = _compute_dtype(dtype_in)
    u, delta, A, B = u.to(cd), delta.to(cd), A.to(cd), B.to(cd)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    dA = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])  # (b, d, l, n), in (0, 1] for A <= 0
    dBu = (delta * u).unsqueeze(-1) * _expand_bc(B, b, d, l)  # (b, d, l, n)
    return dtype_in, u, dA, dBu


def _finish(states, u, C, D, z, dtype_in):
    b, d, l = u.shape
    Cf = C.to(states.dtype)
    if Cf.ndim == 3:  # (b, n, l): contract n with a batched matmul instead of a broadcast product
        y = torch.einsum("bdln,bnl->bdl", states, Cf)
    else:
        y = (states * _expand_bc(Cf, b, d, l)).sum(-1)
    if D is not None:
        y = y + u * D.to(u.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(u.dtype))
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


def _step_major(x: torch.Tensor, K: int, T: int) -> torch.Tensor:
    """``(b, d, l)`` -> ``(K, T, b, d, 1)`` (position-major, zero-padded to ``K*T``)."""
    b, d, l = x.shape
    xs = x.permute(2, 0, 1)
    if K * T != l:
        xs = F.pad(xs, (0, 0, 0, 0, 0, K * T - l))
    return xs.contiguous().view(K, T, b, d, 1)


class _BC:
    """Per-step access to ``B`` or ``C`` in one of mamba-ssm's layouts, and the way back for gradients.

    ``kind`` is ``"const"`` for ``(d, n)``, ``"var"`` for ``(b, n, l)`` and ``"group"`` for
    ``(b, g, n, l)`` (expanded to one row per channel). ``at(t)`` broadcasts against ``(K, b, d, n)``.
    """

    def __init__(self, M: torch.Tensor, b: int, d: int, l: int, K: int, T: int) -> None:
        self.shape, self.d, self.l = M.shape, d, l
        n = M.shape[-1] if M.ndim == 2 else M.shape[-2]
        if M.ndim == 2:
            self.kind, self.steps = "const", M.view(1, 1, d, n)
            return
        if M.ndim == 3:
            self.kind, Ms = "var", M.permute(2, 0, 1).unsqueeze(2)  # (l, b, 1, n)
        else:
            self.kind = "group"
            Ms = M.repeat_interleave(d // M.shape[1], dim=1).permute(3, 0, 1, 2)  # (l, b, d, n)
        if K * T != l:
            Ms = F.pad(Ms, (0, 0, 0, 0, 0, 0, 0, K * T - l))
        self.steps = Ms.contiguous().view(K, T, *Ms.shape[1:])

    def at(self, t: int) -> torch.Tensor:
        return self.steps if self.kind == "const" else self.steps[:, t]

    def grad_step(self, full: torch.Tensor) -> torch.Tensor:
        """Reduce a ``(K, b, d, n)`` per-step gradient to this layout's per-step shape."""
        if self.kind == "const":
            return full.sum((0, 1))
        return full if self.kind == "group" else full.sum(2, keepdim=True)

    def grad_out(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """Per-step gradients (in ``t`` order) -> a gradient shaped like the original tensor."""
        if self.kind == "const":
            return torch.stack(steps).sum(0)
        g = torch.stack(steps, dim=1)  # (K, T, b, dM, n)
        g = g.reshape(-1, *g.shape[2:])[: self.l]  # (l, b, dM, n)
        if self.kind == "var":
            return g.squeeze(2).permute(1, 2, 0)
        lb, bb, d, n = g.shape
        groups = self.shape[1]
        return g.view(lb, bb, groups, d // groups, n).sum(3).permute(1, 2, 3, 0)


def _contract_n(h: torch.Tensor, M: _BC, t: int) -> torch.Tensor:
    """``sum_n h[..., n] * M_t[..., n]`` -> ``(K, b, d, 1)``."""
    if M.kind == "var":
        return torch.matmul(h, M.at(t).transpose(-1, -2))
    return (h * M.at(t)).sum(-1, keepdim=True)


def _contract_d(h: torch.Tensor, v: torch.Tensor, M: _BC) -> torch.Tensor:
    """``sum over the broadcast dims of h * v`` to ``M``'s per-step shape (``v``: ``(K, b, d, 1)``)."""
    if M.kind == "var":
        return torch.matmul(h.transpose(-1, -2), v).transpose(-1, -2)
    return M.grad_step(h * v)


class _ChunkedScan(torch.autograd.Function):
    """Core recurrence ``h_s = exp(dt_s A) h_{s-1} + dt_s u_s B_s``, ``y_s = C_s h_s`` (no D, no z).

    Forward: positions are grouped into ``K`` chunks of ``T``. Pass 1 runs the ``T`` steps of all
    chunks at once from a zero state (one ``(K, b, d, n)`` slice per step, recomputing ``exp(dt A)``
    on the fly so no ``(b, d, l, n)`` tensor is ever stored); a loop over the ``K`` chunk boundaries
    carries the true entering state of every chunk (decay of a whole chunk: ``exp(A sum dt)``); pass 2
    reruns the chunk steps from the carried states and contracts with ``C`` as it goes. Only the
    ``(K, b, d, n)`` entering states are saved.

    Backward (hand-written reverse scan): the states are recomputed chunk-wise, the adjoint
    ``g_s = C_s^T dy_s + exp(dt_{s+1} A) g_{s+1}`` is scanned backwards with the same two-level
    scheme, and the gradients of ``dt``, ``u``, ``A``, ``B``, ``C`` are accumulated per step.
    Every decay factor is ``exp`` of a non-positive number for ``A <= 0``: nothing overflows.
    """

    @staticmethod
    def forward(ctx, dt, u, A, B, C, T):
        b, d, l = u.shape
        n = A.shape[1]
        K = -(-l // T)
        dtS = _step_major(dt, K, T)
        dtuS = _step_major(dt * u, K, T)
        Bs, Cs = _BC(B, b, d, l, K, T), _BC(C, b, d, l, K, T)
        # pass 1: local states of every chunk from zero
        h = u.new_zeros(K, b, d, n)
        for t in range(T):
            h = torch.addcmul(dtuS[:, t] * Bs.at(t), torch.exp(dtS[:, t] * A), h)
        decay = torch.exp(dtS.sum(1) * A)  # (K, b, d, n): product of a chunk's decays
        # carry across chunk boundaries: the state entering chunk k
        carry = [u.new_zeros(b, d, n)]
        for k in range(K - 1):
            carry.append(torch.addcmul(h[k], decay[k], carry[-1]))
        h0 = torch.stack(carry)
        # pass 2: rerun every chunk from its entering state, contracting with C
        h, ys = h0, []
        for t in range(T):
            h = torch.addcmul(dtuS[:, t] * Bs.at(t), torch.exp(dtS[:, t] * A), h)
            ys.append(_contract_n(h, Cs, t))
        y = torch.stack(ys, dim=1).view(K * T, b, d)[:l].permute(1, 2, 0)
        # padded tail steps have dt = 0 (decay 1, no input): the last chunk's final state is the answer
        last = h[-1]
        ctx.save_for_backward(dt, u, A, B, C, h0)
        ctx.T = T
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, glast):
        dt, u, A, B, C, h0 = ctx.saved_tensors
        T = ctx.T
        b, d, l = u.shape
        K = h0.shape[0]
        dtS = _step_major(dt, K, T)
        uS = _step_major(u, K, T)
        dtuS = dtS * uS
        gyS = _step_major(gy if gy is not None else torch.zeros_like(u), K, T)
        Bs, Cs = _BC(B, b, d, l, K, T), _BC(C, b, d, l, K, T)
        # recompute decays and states of every step
        decays, states, h = [], [], h0
        for t in range(T):
            a = torch.exp(dtS[:, t] * A)
            h = torch.addcmul(dtuS[:, t] * Bs.at(t), a, h)
            decays.append(a)
            states.append(h)
        # pass A: local adjoints from zero at every chunk end
        g = torch.zeros_like(h0)
        for t in range(T - 1, -1, -1):
            g = torch.addcmul(g, gyS[:, t], Cs.at(t))
            if t > 0:
                g = g * decays[t]
        decay_rest = torch.exp(dtS[:, 1:].sum(1) * A)  # product of decays at steps 1..T-1 of a chunk
        # carry adjoints backwards across chunk boundaries: E[k] is the adjoint entering chunk k's end
        ends = [torch.zeros_like(h0[0])] * K
        if glast is not None:
            ends[K - 1] = glast  # padded tail steps have decay 1: the gradient reaches the real last step
        for k in range(K - 1, 0, -1):
            G = torch.addcmul(g[k], decay_rest[k], ends[k])
            ends[k - 1] = decays[0][k] * G
        g = torch.stack(ends)
        # pass B: the true adjoint, per-step gradients
        dA = torch.zeros_like(h0)
        ddt, gdtu, dBs, dCs = [None] * T, [None] * T, [None] * T, [None] * T
        for t in range(T - 1, -1, -1):
            gy_t = gyS[:, t]
            g = torch.addcmul(g, gy_t, Cs.at(t))
            prev = states[t - 1] if t > 0 else h0
            ga = g * prev * decays[t]  # d loss / d(dt_s A), elementwise over (d, n)
            ddt[t] = (ga * A).sum(-1, keepdim=True)
            dA.addcmul_(ga, dtS[:, t])
            gdtu[t] = _contract_n(g, Bs, t)
            dBs[t] = _contract_d(g, dtuS[:, t], Bs)
            dCs[t] = _contract_d(states[t], gy_t, Cs)
            g = g * decays[t]

        def back(xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(xs, dim=1).view(K * T, b, d)[:l].permute(1, 2, 0)

        g_dtu = back(gdtu)
        grad_dt = back(ddt) + g_dtu * u
        grad_u = g_dtu * dt
        return grad_dt, grad_u, dA.sum((0, 1)), Bs.grad_out(dBs), Cs.grad_out(dCs), None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs (as mamba-ssm's reference), float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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

    The recurrence runs in a custom autograd function (:class:`_ChunkedScan`): about ``2T + l/T``
    vectorised steps forward and ``3T + l/T`` backward, memory ``O(b d n l / T)`` saved for the
    backward pass. ``chunk_size`` (``T``) defaults to about ``sqrt(l)`` (an exact divisor of ``l``
    when one is close). Computation is in float32 (float64 for float64 inputs).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    T = chunk_size or _default_chunk(l)
    if T < 1:
        raise ValueError(f"chunk_size must be >= 1, got {T}")
    cd = _compute_dtype(u.dtype)
    dtype_in = u.dtype
    uf, dt = u.to(cd), delta.to(cd)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cd)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    y, last = _ChunkedScan.apply(dt, uf, A.to(cd), B.to(cd), C.to(cd), min(T, l))
    if D is not None:
        y = y + uf * D.to(cd)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


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
