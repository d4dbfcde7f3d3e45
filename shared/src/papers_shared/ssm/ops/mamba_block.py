"""A whole Mamba block with one input channel (``d_model = 1``) in one compiled CPU pass (ours).

A Mamba block whose input has a single channel (FSG's slow net reads one scalar gradient stream) spends
its time in element-wise passes over ``(tokens, d_inner)`` tensors: ``in_proj`` with ``K = 1``, the
depthwise conv, ``x_proj`` / ``dt_proj`` with a handful of outputs, softplus, SiLU, the gate and
``out_proj`` with ``N = 1`` each read and write every token. :func:`mamba_block_packed` runs the
block of ``papers_shared.ssm.modules.Mamba`` (``bias=False``; Gu & Dao 2023, Sec. 3.4 and Alg. 2;
state-spaces/mamba @ 52f57d6 ``mamba_simple.py:Mamba.forward``) in ``_mamba_cpu.cpp`` instead: per
block of 64 positions the position-parallel parts as vectorised loops and the recurrence with the
states in cache, only the output and one state per block written; the backward pass recomputes a
block at a time and runs the adjoint. Sequences of different lengths are packed (``cu_seqlens``
offsets, as flash-attention's varlen API), so every layer of a network is one call, spread over
torch's intra-op thread count. Same values as the module's PyTorch path up to rounding; the tests
check values and every gradient against it.
"""

from __future__ import annotations

import ctypes

import torch

from papers_shared.ssm.ops import _native

__all__ = ["mamba_block_available", "mamba_block_packed"]


def mamba_block_available() -> bool:
    """True when the compiled CPU kernels build here (see :mod:`papers_shared.ssm.ops._native`)."""
    return _native.available()


def _threads(tokens: int, nseq: int) -> int:
    return max(1, min(torch.get_num_threads(), nseq, tokens // 4096 or 1))


class _MambaBlock1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, cu, wx, wz, ck, cb, xp, wdt, bdt, A, D, wo):
        lib = _native.library()
        params = [t.contiguous() for t in (wx, wz, ck, cb, xp, wdt, bdt, A, D, wo)]
        u = u.contiguous()
        di, dc = ck.shape
        R, N = wdt.shape[1], A.shape[1]
        nseq = cu.numel() - 1
        lens = cu[1:] - cu[:-1]
        block = lib.papers_mamba1_block_size()
        blocks = int(((lens + block - 1) // block).sum())
        out = torch.empty_like(u)
        ckpt = u.new_empty(blocks, di, N)
        code = 1 if u.dtype == torch.float64 else 0
        ptrs = (ctypes.c_void_p * 10)(*(t.data_ptr() for t in params))
        lib.papers_mamba1_fwd(
            code, u.data_ptr(), cu.data_ptr(), nseq, ptrs, di, dc, R, N, out.data_ptr(), ckpt.data_ptr(),
            _threads(u.numel(), nseq),
        )  # fmt: skip
        ctx.save_for_backward(u, cu, ckpt, *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        lib = _native.library()
        u, cu, ckpt, *params = ctx.saved_tensors
        wx, wz, ck, cb, xp, wdt, bdt, A, D, wo = params
        di, dc = ck.shape
        R, N = wdt.shape[1], A.shape[1]
        nseq = cu.numel() - 1
        nt = _threads(u.numel(), nseq)
        size = lib.papers_mamba1_grad_size(di, dc, R, N)
        grads = u.new_zeros(nt, size)
        du = torch.zeros_like(u)
        gout = gout.contiguous()
        code = 1 if u.dtype == torch.float64 else 0
        ptrs = (ctypes.c_void_p * 10)(*(t.data_ptr() for t in params))
        lib.papers_mamba1_bwd(
            code, u.data_ptr(), cu.data_ptr(), nseq, ptrs, di, dc, R, N, ckpt.data_ptr(), gout.data_ptr(),
            du.data_ptr(), grads.data_ptr(), nt,
        )  # fmt: skip
        flat = grads.sum(0)
        out, start = [], 0
        for p in params:
            out.append(flat[start : start + p.numel()].view_as(p))
            start += p.numel()
        return (du if ctx.needs_input_grad[0] else None), None, *out


def mamba_block_packed(
    u: torch.Tensor,
    cu_seqlens: torch.Tensor,
    in_proj_weight: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    out_proj_weight: torch.Tensor,
) -> torch.Tensor:
    """The one-channel Mamba block over packed sequences (module docstring).

    Args:
        u: ``(total,)`` the sequences one after another (float32 or float64, CPU).
        cu_seqlens: ``(num_seq + 1,)`` int64 offsets: sequence ``i`` is ``u[cu[i]:cu[i+1]]``; each
            starts from a zero state and zero conv padding.
        in_proj_weight ``(2 d_inner, 1)``, conv_weight ``(d_inner, 1, d_conv)``, conv_bias ``(d_inner,)``
        or None, x_proj_weight ``(dt_rank + 2N, d_inner)``, dt_proj_weight ``(d_inner, dt_rank)``,
        dt_proj_bias ``(d_inner,)``, A ``(d_inner, N)`` (real, e.g. ``-exp(A_log)``), D ``(d_inner,)``,
        out_proj_weight ``(1, d_inner)``: the block's parameters (``bias=False`` projections).

    Returns ``(total,)``; differentiable in ``u`` and every parameter.
    """
    if not mamba_block_available():
        raise RuntimeError("the compiled CPU Mamba block is not available here (no C++ compiler?)")
    if u.ndim != 1 or u.dtype not in (torch.float32, torch.float64) or u.is_cuda:
        raise ValueError(
            f"u must be a 1-d float32/float64 CPU tensor; got {tuple(u.shape)} {u.dtype} {u.device}"
        )
    cu = torch.as_tensor(cu_seqlens, dtype=torch.int64).contiguous()
    if (
        cu.ndim != 1
        or cu.numel() < 2
        or int(cu[0]) != 0
        or int(cu[-1]) != u.numel()
        or bool((cu[1:] < cu[:-1]).any())
    ):
        raise ValueError("cu_seqlens must be non-decreasing int64 offsets from 0 to u.numel()")
    di = conv_weight.shape[0]
    if in_proj_weight.shape != (2 * di, 1) or out_proj_weight.shape != (1, di):
        raise ValueError(
            f"in_proj (2 d_inner, 1) and out_proj (1, d_inner) expected for d_inner={di}; got "
            f"{tuple(in_proj_weight.shape)} and {tuple(out_proj_weight.shape)}"
        )
    if A.is_complex():
        raise ValueError("the fused Mamba block takes a real A")
    dt = u.dtype
    cb = conv_bias if conv_bias is not None else u.new_zeros(di)
    w = in_proj_weight[:, 0].to(dt)
    return _MambaBlock1.apply(
        u, cu, w[:di], w[di:], conv_weight[:, 0, :].to(dt), cb.to(dt), x_proj_weight.to(dt),
        dt_proj_weight.to(dt), dt_proj_bias.to(dt), A.to(dt), D.to(dt), out_proj_weight[0].to(dt),
    )  # fmt: skip
