"""Selective scan (Mamba-1 / S6) in pure PyTorch, with dispatch to mamba-ssm's CUDA kernel.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (Gu & Dao 2023, Alg. 2)::

    dt_s  = softplus(delta_s + delta_bias)            (if delta_softplus; else delta_s + delta_bias)
    h_s   = exp(dt_s * A[d, n]) * h_{s-1} + dt_s * B[n, s] * u_s
    y_s   = sum_n C[n, s] * h_s + D[d] * u_s;   y_s *= silu(z_s) if z is given

Signature and tensor layouts are those of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:
``u, delta: (b, d, l)``; ``A: (d, n)``; ``B, C: (b, n, l)``, grouped ``(b, g, n, l)`` or constant
``(d, n)``; ``D, delta_bias: (d,)``; ``z: (b, d, l)``.

Four implementations:

* :func:`selective_scan_ref`: the sequential loop (one step per position), the reference.
* :func:`selective_scan_fused`: a compiled C++ loop (``_scan_cpu.cpp``, built at first use with the
  system compiler and cached; see ``_native.py``) that keeps the ``n`` states of one ``(batch,
  channel)`` pair in registers and computes ``exp(dt A)`` in the loop: one streaming pass, about the
  cost of a single ``torch.exp`` over the ``(b, d, l, n)`` decays (``python -m
  papers_shared.ssm.ops.benchmark``). The default for CPU tensors where it compiles; ``torch.compile``
  of the chunked loops was measured too (about 4 minutes to compile at ``l=2048``, no faster than eager).
* :func:`selective_scan_chunked`: a two-level scan in a custom autograd function. The sequence is
  cut into chunks of ``T``; a loop over the ``T`` positions of all chunks at once gives each chunk's
  local states, a loop over the ``l/T`` chunk boundaries carries the states, and a second pass over
  the ``T`` positions yields the outputs. ``exp(dt A)`` is recomputed per step, so no ``(b, d, l, n)``
  tensor is stored; the backward pass is a hand-written reverse (adjoint) scan with the same
  two-level structure. It needs ``O(T + l/T)`` Python steps instead of ``l`` (``T ~ sqrt(l)``) and
  only multiplies decays in (0, 1]: no ``exp`` of a positive cumulative sum, so large ``delta``
  cannot overflow or give NaN gradients.
* mamba-ssm's CUDA kernel, used by :func:`selective_scan` when it imports and every tensor is on CUDA
  (CUDA tensors without it fall back to the chunked scan with a one-time warning).

Complex ``A`` (S4D-style diagonal systems) follows mamba-ssm: complex states, output ``2 Re(C h)``,
variable ``B``/``C`` as real ``(..., 2l)`` tensors with interleaved real and imaginary parts (or, ours,
complex ``(..., l)`` tensors). The last state (``return_last_state=True``) never carries a gradient.
"""

from __future__ import annotations

import ctypes
import math
import warnings

import torch
import torch.nn.functional as F

from papers_shared.device import kernel_available
from papers_shared.ssm.ops import _native

__all__ = [
    "BACKENDS",
    "fused_available",
    "has_mamba_cuda",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_fused",
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
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        # complex A: a variable B / C is mamba-ssm's real (..., 2l) with real and imaginary parts
        # interleaved along positions, or (ours) a complex (..., l) tensor
        lm = 2 * l if A.is_complex() and M.ndim >= 3 and not M.is_complex() else l
        ok = (
            (M.ndim == 2 and tuple(M.shape) == (d, n))
            or (M.ndim == 3 and tuple(M.shape) == (b, n, lm))
            or (M.ndim == 4 and M.shape[0] == b and M.shape[2:] == (n, lm) and d % M.shape[1] == 0)
        )
        if not ok:
            raise ValueError(
                f"{name} must be (d, n), (b, n, l) or (b, g, n, l) with d % g == 0 (length 2l, real and "
                f"imaginary parts interleaved, for a real variable {name} with complex A); got "
                f"{tuple(M.shape)} for b={b}, d={d}, n={n}, l={l}"
            )
        if M.is_complex() and not A.is_complex():
            raise ValueError(f"a complex {name} needs a complex A")
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


def _as_complex_bc(M: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """With complex ``A``: a real variable ``B``/``C`` of length ``2l`` (real and imaginary parts
    interleaved, mamba-ssm's layout) becomes a complex ``(..., l)`` tensor; a constant one becomes complex."""
    if not A.is_complex() or M.is_complex():
        return M
    if M.ndim == 2:
        return M.to(A.dtype)
    return torch.view_as_complex(M.reshape(*M.shape[:-1], -1, 2).contiguous())


def _cast(x: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """``x`` in the compute dtype ``cd``, or its complex counterpart when ``x`` is complex."""
    return x.to(torch.complex128 if cd == torch.float64 else torch.complex64) if x.is_complex() else x.to(cd)


def _prepare_dt(u, delta, delta_bias, delta_softplus):
    cd = _compute_dtype(u.dtype)
    uf, dt = u.to(cd), delta.to(cd)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cd)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return cd, uf, dt


def _finish(y, u, D, z, dtype_in):
    """``y`` (``sum_n C h``, complex for complex A: ``2 Re``, the conjugate pair's share) ``+ D u``, ``* silu(z)``."""
    if y.is_complex():
        y = 2 * y.real  # as mamba-ssm: each complex state stands for itself and its conjugate
    # without autograd, update y in place (same arithmetic, no fresh (b, d, l) buffers to fault in)
    inplace = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (y, u, D, z)))
    if D is not None:
        Du = u * D.to(u.dtype)[None, :, None]
        y = y.add_(Du) if inplace else y + Du
    if z is not None:
        g = F.silu(z.to(u.dtype))
        y = y.mul_(g) if inplace else y * g
    return y.to(dtype_in)


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Sequential reference: one recurrence step per position (mamba-ssm's reference algorithm).

    The returned last state carries no gradient (as mamba-ssm's CUDA kernel; see :func:`selective_scan`).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    cd, uf, dt = _prepare_dt(u, delta, delta_bias, delta_softplus)
    B, C = _as_complex_bc(B, A), _as_complex_bc(C, A)
    A, B, C = _cast(A, cd), _cast(B, cd), _cast(C, cd)
    b, d, l = uf.shape
    dA = torch.exp(dt.unsqueeze(-1) * A[None, :, None, :])  # (b, d, l, n), in (0, 1] for A <= 0
    dBu = (dt * uf).unsqueeze(-1) * _expand_bc(B, b, d, l)  # (b, d, l, n)
    h = dA.new_zeros(b, d, A.shape[1])
    states = []
    for s in range(l):
        h = dA[:, :, s] * h + dBu[:, :, s]
        states.append(h)
    hs = torch.stack(states, dim=2)
    if C.ndim == 3:  # (b, n, l): contract n with a batched matmul instead of a broadcast product
        y = torch.einsum("bdln,bnl->bdl", hs, C)
    else:
        y = (hs * _expand_bc(C, b, d, l)).sum(-1)
    y = _finish(y, uf, D, z, dtype_in)
    return (y, h.detach()) if return_last_state else y


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


def _contract_n(h: torch.Tensor, M: _BC, t: int, conj: bool = False) -> torch.Tensor:
    """``sum_n h[..., n] * M_t[..., n]`` (``M_t`` conjugated if ``conj``) -> ``(K, b, d, 1)``."""
    m = M.at(t).conj() if conj else M.at(t)
    if M.kind == "var":
        return torch.matmul(h, m.transpose(-1, -2))
    return (h * m).sum(-1, keepdim=True)


def _contract_d(h: torch.Tensor, v: torch.Tensor, M: _BC) -> torch.Tensor:
    """``sum over the broadcast dims of h * v`` to ``M``'s per-step shape (``v``: ``(K, b, d, 1)``)."""
    if M.kind == "var":
        return torch.matmul(h.transpose(-1, -2), v.to(h.dtype)).transpose(-1, -2)
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
    ``A``, ``B``, ``C`` may be complex (``dt``, ``u`` real): the backward pass then multiplies by the
    conjugates of the forward factors (PyTorch's convention for complex gradients). The last state is
    returned without a gradient path (as mamba-ssm's CUDA kernel).
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
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, _glast):
        dt, u, A, B, C, h0 = ctx.saved_tensors
        T = ctx.T
        b, d, l = u.shape
        K = h0.shape[0]
        dtS = _step_major(dt, K, T)
        uS = _step_major(u, K, T)
        dtuS = dtS * uS
        gyS = _step_major(gy if gy is not None else u.new_zeros(b, d, l, dtype=h0.dtype), K, T)
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
            g = torch.addcmul(g, gyS[:, t], Cs.at(t).conj())
            if t > 0:
                g = g * decays[t].conj()
        decay_rest = torch.exp(dtS[:, 1:].sum(1) * A)  # product of decays at steps 1..T-1 of a chunk
        # carry adjoints backwards across chunk boundaries: E[k] is the adjoint entering chunk k's end
        ends = [torch.zeros_like(h0[0])] * K
        for k in range(K - 1, 0, -1):
            G = torch.addcmul(g[k], decay_rest[k].conj(), ends[k])
            ends[k - 1] = decays[0][k].conj() * G
        g = torch.stack(ends)
        # pass B: the true adjoint, per-step gradients
        dA = torch.zeros_like(h0)
        ddt, gdtu, dBs, dCs = [None] * T, [None] * T, [None] * T, [None] * T
        for t in range(T - 1, -1, -1):
            gy_t = gyS[:, t]
            g = torch.addcmul(g, gy_t, Cs.at(t).conj())
            prev = states[t - 1] if t > 0 else h0
            ga = g * (prev * decays[t]).conj()  # d loss / d(dt_s A), elementwise over (d, n)
            ddt[t] = torch.real((ga * A.conj()).sum(-1, keepdim=True))
            dA.addcmul_(ga, dtS[:, t])
            gdtu[t] = torch.real(_contract_n(g, Bs, t, conj=True))
            dBs[t] = _contract_d(g, dtuS[:, t], Bs)
            dCs[t] = _contract_d(states[t].conj(), gy_t, Cs)
            g = g * decays[t].conj()

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
    when one is close). Computation is in float32 (float64 for float64 inputs); complex ``A`` is
    supported (complex states, output ``2 Re(C h)`` as mamba-ssm).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    T = chunk_size or _default_chunk(l)
    if T < 1:
        raise ValueError(f"chunk_size must be >= 1, got {T}")
    dtype_in = u.dtype
    cd, uf, dt = _prepare_dt(u, delta, delta_bias, delta_softplus)
    B, C = _as_complex_bc(B, A), _as_complex_bc(C, A)
    y, last = _ChunkedScan.apply(dt, uf, _cast(A, cd), _cast(B, cd), _cast(C, cd), min(T, l))
    y = _finish(y, uf, D, z, dtype_in)
    return (y, last) if return_last_state else y


def _bc_storage(M: torch.Tensor, d: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``M`` as the fused kernel reads it: contiguous ``(d, n)``, ``(b, l, n)`` or ``(b, g, l, n)``
    storage and its ``(batch stride, group stride, channels per group, position stride)``."""
    if M.ndim == 2:
        return M.contiguous(), (0, M.shape[1], 1, 0)
    if M.ndim == 3:
        _, n, l = M.shape
        return M.transpose(1, 2).contiguous(), (l * n, 0, d, n)
    _, g, n, l = M.shape
    return M.transpose(2, 3).contiguous(), (g * l * n, l * n, d // g, n)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _threads(work: int) -> int:
    """Worker threads for the fused kernel: torch's intra-op count, about >= 64k positions x states each."""
    return max(1, min(torch.get_num_threads(), work // 65536))


class _FusedScan(torch.autograd.Function):
    """The recurrence for real ``A`` in the compiled loop of ``_scan_cpu.cpp`` (ours); ``y = C h``.

    Forward: one pass per ``(batch, channel)`` pair: ``dt = softplus(delta + delta_bias)`` for the
    row, then the recurrence with the ``n`` states in registers and ``exp(dt A)`` computed in the
    loop; only ``y`` and the last state are written. Backward: per pair the kernel recomputes ``dt``
    and the states (into an ``l x n`` scratch buffer), runs the adjoint scan backwards and applies
    softplus' derivative; ``dA``, ``dB``, ``dC`` are summed over per-thread buffers. Only the inputs
    are saved.
    The last state carries no gradient (as mamba-ssm's CUDA kernel).
    """

    @staticmethod
    def forward(ctx, delta, u, A, Bs, Cs, delta_bias, softplus, lb, lc):
        lib = _native.library()
        delta, u, A = delta.contiguous(), u.contiguous(), A.contiguous()
        b, d, l = u.shape
        n = A.shape[1]
        y = torch.empty_like(u)
        last = u.new_empty(b, d, n)
        code = 1 if u.dtype == torch.float64 else 0
        lbp, lcp = (ctypes.c_int64 * 4)(*lb), (ctypes.c_int64 * 4)(*lc)
        bias_ptr = None if delta_bias is None else delta_bias.data_ptr()
        lib.papers_scan_fwd(
            code, *map(_ptr, (delta, u, A, Bs, Cs)), b, d, l, n, lbp, lcp,
            bias_ptr, int(softplus), _ptr(y), _ptr(last), _threads(b * d * l * n),
        )  # fmt: skip
        ctx.save_for_backward(delta, u, A, Bs, Cs, delta_bias)
        ctx.softplus, ctx.lb, ctx.lc = softplus, lb, lc
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, _glast):
        lib = _native.library()
        delta, u, A, Bs, Cs, delta_bias = ctx.saved_tensors
        b, d, l = u.shape
        n = A.shape[1]
        nt = _threads(b * d * l * n)
        gy = gy.contiguous() if gy is not None else torch.zeros_like(u)
        g_delta, du = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_zeros(nt, d, n)
        dB, dC = u.new_zeros(nt, *Bs.shape), u.new_zeros(nt, *Cs.shape)
        lbp, lcp = (ctypes.c_int64 * 4)(*ctx.lb), (ctypes.c_int64 * 4)(*ctx.lc)
        code = 1 if u.dtype == torch.float64 else 0
        bias_ptr = None if delta_bias is None else delta_bias.data_ptr()
        lib.papers_scan_bwd(
            code, *map(_ptr, (delta, u, A, Bs, Cs)), b, d, l, n, lbp, lcp, bias_ptr, int(ctx.softplus),
            *map(_ptr, (gy, g_delta, du, dA, dB, dC)), Bs.numel(), Cs.numel(), nt,
        )  # fmt: skip
        g_bias = g_delta.sum((0, 2)) if delta_bias is not None and ctx.needs_input_grad[5] else None
        return g_delta, du, dA.sum(0), dB.sum(0), dC.sum(0), g_bias, None, None, None


def fused_available() -> bool:
    """True when the fused CPU loop (``_scan_cpu.cpp``, compiled at first use) can run here."""
    return _native.available()


def selective_scan_fused(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Selective scan in the compiled CPU loop (:class:`_FusedScan`); same results as
    :func:`selective_scan_ref` up to rounding (its ``exp`` is a polynomial within about 1 ulp).

    CPU tensors and real ``A`` only: complex ``A`` runs :func:`selective_scan_chunked` (which handles
    it); a ``RuntimeError`` where the loop could not be compiled (see :func:`fused_available`).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if any(t.device.type != "cpu" for t in (u, delta, A, B, C)):
        raise RuntimeError("the fused selective scan runs on CPU tensors only")
    if not fused_available():
        raise RuntimeError(
            "the fused CPU selective scan could not be compiled here (needs a C++ compiler); "
            "use backend='chunked'"
        )
    dtype_in = u.dtype
    cd = _compute_dtype(dtype_in)
    d = u.shape[1]
    Bs, lb = _bc_storage(B.to(cd), d)
    Cs, lc = _bc_storage(C.to(cd), d)
    bias = delta_bias.to(cd).contiguous() if delta_bias is not None else None
    uf = u.to(cd)
    y, last = _FusedScan.apply(delta.to(cd), uf, A.to(cd), Bs, Cs, bias, bool(delta_softplus), lb, lc)
    y = _finish(y, uf, D, z, dtype_in)
    return (y, last) if return_last_state else y


_fallback_warned = False


def _warn_cuda_fallback() -> None:
    """One warning per process: CUDA tensors, but mamba-ssm's kernel does not import."""
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(
        "selective_scan: CUDA tensors but mamba-ssm's selective-scan kernel is not available; running the "
        "chunked PyTorch scan on the GPU (much slower). Install the `cuda` extra (mamba-ssm, "
        "causal-conv1d; see scripts/gpu_check.sh) or pass backend='chunked' to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def _cuda_kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """mamba-ssm's ``selective_scan_fn``; complex ``B``/``C`` of length ``l`` are passed in its real
    interleaved ``(..., 2l)`` layout. Its last state is returned detached (its backward ignores it)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if A.is_complex():
        B, C = (torch.view_as_real(M).flatten(-2) if M.ndim >= 3 and M.is_complex() else M for M in (B, C))
    out = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if return_last_state:
        return out[0], out[1].detach()
    return out


#: ``backend`` values of :func:`selective_scan`.
BACKENDS = ("auto", "torch", "fused", "chunked", "ref", "cuda")


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

    Backends: ``"auto"`` uses mamba-ssm's CUDA kernel when it imports and all tensors are on CUDA (one
    ``RuntimeWarning`` per process when CUDA tensors have to fall back to the PyTorch scan), otherwise
    ``"torch"``; ``"torch"``: the fused CPU loop (:func:`selective_scan_fused`) for CPU tensors when it
    compiles here, else the chunked scan; ``"fused"``, ``"chunked"``, ``"ref"`` (the sequential loop)
    force one implementation; ``"cuda"`` the kernel (a clear ``RuntimeError`` where it cannot run).
    ``chunk_size`` applies to the chunked scan.

    Complex ``A`` (with complex constant ``B``/``C``, or variable ones in mamba-ssm's real interleaved
    ``(..., 2l)`` layout or as complex ``(..., l)`` tensors) runs on every backend; the fused loop hands
    it to the chunked scan. The output is ``2 Re(C h) + D u`` as in mamba-ssm.

    ``return_last_state=True`` returns ``(y, last_state)`` where ``last_state`` carries **no gradient on
    any backend**: mamba-ssm's CUDA kernel returns a slice of its saved chunk states and its backward
    ignores that output's gradient (``mamba_ssm/ops/selective_scan_interface.py:SelectiveScanFn.backward``
    and the ``selective_scan_fn`` docstring, state-spaces/mamba e9594ce), so the PyTorch backends detach
    it too and training gives the same gradients on CPU and GPU.
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(map(repr, BACKENDS))}")
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    on_cuda = all(t.is_cuda for t in tensors)
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if backend == "cuda":
        if not on_cuda:
            raise RuntimeError("backend='cuda' needs every tensor on a CUDA device")
        if not has_mamba_cuda():
            raise RuntimeError(
                "backend='cuda' needs mamba-ssm's CUDA kernel: install the package's `cuda` extra "
                "(mamba-ssm, causal-conv1d) on a machine with CUDA"
            )
    if backend == "auto" and on_cuda:
        if has_mamba_cuda():
            backend = "cuda"
        else:
            _warn_cuda_fallback()
            backend = "chunked"
    if backend == "cuda":
        _check(u, delta, A, B, C, D, z, delta_bias)
        return _cuda_kernel(*args)
    if backend == "ref":
        return selective_scan_ref(*args)
    if backend == "fused" or (
        backend in ("auto", "torch") and on_cpu and not A.is_complex() and fused_available()
    ):
        return selective_scan_fused(*args)  # complex A: hands over to the chunked scan
    return selective_scan_chunked(*args, chunk_size=chunk_size)
