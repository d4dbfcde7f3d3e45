"""Sequence models for the slow net (spec §3.4, §4): a pure-PyTorch Mamba-1 block and the S4 / S5
variants of the ablations, all running on :func:`papers_shared.ssm.ops.selective_scan`.

The scan is the workspace's chunked pure-PyTorch implementation on CPU and mamba-ssm's CUDA kernel on
CUDA when the ``cuda`` extra is installed (``backend="auto"``); mamba-ssm is never imported at module
import time.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from papers_shared.ssm.ops import selective_scan

__all__ = ["MambaBlock", "S4DLayer", "S4SequenceModel", "S5Layer", "S5SequenceModel", "SCAN_BACKENDS"]

SCAN_BACKENDS = ("auto", "torch", "ref", "cuda")


def _check_backend(backend: str) -> None:
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; use one of {list(SCAN_BACKENDS)}")


def _log_uniform(n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.exp(torch.rand(n) * (math.log(hi) - math.log(lo)) + math.log(lo))


class MambaBlock(nn.Module):
    """One Mamba-1 block (Gu & Dao 2023) with mamba-ssm's parameterisation and init (spec §3.4).

    ``[x, z] = in_proj(X)``; ``x = SiLU(causal depthwise conv1d(x))``; ``[dt, B, C] = x_proj(x)``;
    ``delta = softplus(dt_proj(dt))``; ``y = selective_scan(x, delta, A=-exp(A_log), B, C, D)``;
    ``out = out_proj(y * SiLU(z))``. No residual and no norm (as the official slow net).
    Input and output ``(batch, length, d_model)``.
    """

    def __init__(
        self,
        d_model: int = 1,
        d_state: int = 16,
        d_conv: int = 8,
        expand: int = 100,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_backend(backend)
        if min(d_model, d_state, d_conv, expand) < 1:
            raise ValueError("d_model, d_state, d_conv and expand must be >= 1")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend, self.chunk_size = backend, chunk_size
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = _log_uniform(di, dt_min, dt_max).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 3 or h.shape[-1] != self.d_model:
            raise ValueError(f"MambaBlock expects (batch, length, {self.d_model}); got {tuple(h.shape)}")
        length = h.shape[1]
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)  # (b, d_inner, l) each
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        y = selective_scan(
            x.contiguous(),
            delta.contiguous(),
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            self.D.float(),
            z=z.contiguous(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.backend,
            chunk_size=self.chunk_size,
        )
        return self.out_proj(y.transpose(1, 2))


def _zoh_input_scale(A: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """``(exp(dt A) - 1) / (A dt)``: turns the scan's ``dt * B`` input into the exact ZOH ``B_bar``."""
    x = dt * A
    return torch.where(x.abs() < 1e-6, 1.0 + 0.5 * x, torch.expm1(x) / x)


class S4DLayer(nn.Module):
    """Diagonal S4 layer with real eigenvalues (S4D-Real), ZOH discretisation, per channel.

    ``H`` channels, ``N`` states: ``x_k = exp(dt A) x_{k-1} + B_bar u_k``, ``y_k = C x_k + D u_k``,
    ``A_n = -(n + 1)``; then GELU and a GLU output projection (the S4 block's defaults). Runs on the
    selective scan with time-invariant ``B``/``C``. Input/output ``(batch, length, H)``.
    """

    def __init__(
        self,
        d_model: int = 100,
        d_state: int = 16,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        backend: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_backend(backend)
        self.backend, self.chunk_size = backend, chunk_size
        self.log_dt = nn.Parameter(torch.log(_log_uniform(d_model, dt_min, dt_max)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_model, 1)
        )
        self.B = nn.Parameter(torch.ones(d_model, d_state))
        self.C = nn.Parameter(torch.randn(d_model, d_state) * (0.5 / math.sqrt(d_state)))
        self.D = nn.Parameter(torch.randn(d_model))
        self.output_linear = nn.Linear(d_model, 2 * d_model)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, length, h = u.shape
        A = -torch.exp(self.A_log)
        dt = torch.exp(self.log_dt)
        B = self.B * _zoh_input_scale(A, dt[:, None])
        x = u.transpose(1, 2).contiguous()
        delta = dt[None, :, None].expand(b, h, length).contiguous()
        y = selective_scan(x, delta, A, B, self.C, self.D, backend=self.backend, chunk_size=self.chunk_size)
        return F.glu(self.output_linear(F.gelu(y).transpose(1, 2)), dim=-1)


class S4SequenceModel(nn.Module):
    """The official ``MetaS4History`` layout: ``Linear(1 -> H)``, one S4 layer with a residual and a
    post-LayerNorm, ``Linear(H -> 1)`` (spec §4 ablation; S4D-Real kernel, see README Deviations)."""

    def __init__(
        self, d_model: int = 100, d_state: int = 16, backend: str = "auto", chunk_size: int | None = None
    ):
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.s4 = S4DLayer(d_model, d_state, backend=backend, chunk_size=chunk_size)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        x = self.norm(self.s4(x) + x)
        return self.decoder(x)


class S5Layer(nn.Module):
    """MIMO diagonal SSM (S5, Smith et al. 2023) with real eigenvalues and ZOH discretisation.

    ``x_k = exp(dt A) x_{k-1} + B_bar u_k`` with ``P`` states shared by the ``H`` input channels,
    ``y_k = C x_k + D u_k``. Runs on the selective scan (one scan channel per state).
    """

    def __init__(
        self,
        dim: int = 8,
        state_dim: int = 8,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        backend: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_backend(backend)
        self.backend, self.chunk_size = backend, chunk_size
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_dim + 1, dtype=torch.float32)))
        self.log_dt = nn.Parameter(torch.log(_log_uniform(state_dim, dt_min, dt_max)))
        self.B = nn.Parameter(torch.randn(state_dim, dim) / math.sqrt(dim))
        self.C = nn.Parameter(torch.randn(dim, state_dim) / math.sqrt(state_dim))
        self.D = nn.Parameter(torch.randn(dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, length, _ = u.shape
        A = -torch.exp(self.A_log)
        dt = torch.exp(self.log_dt)
        p = A.numel()
        bu = (u @ self.B.t()) * _zoh_input_scale(A, dt)  # (b, l, P)
        delta = dt[None, :, None].expand(b, p, length).contiguous()
        ones = torch.ones(p, 1, device=u.device, dtype=A.dtype)
        states = selective_scan(
            bu.transpose(1, 2).contiguous(),
            delta,
            A[:, None],
            ones,
            ones,
            backend=self.backend,
            chunk_size=self.chunk_size,
        )
        return states.transpose(1, 2) @ self.C.t() + u * self.D


class S5SequenceModel(nn.Module):
    """The official ``MetaS5Block`` layout: ``Linear(1 -> dim)``, an S5 block (pre-norm S5 + GELU with a
    residual, pre-norm feed-forward with a residual), ``Linear(dim -> 1)`` (spec §4 ablation)."""

    def __init__(
        self, dim: int = 8, state_dim: int = 8, backend: str = "auto", chunk_size: int | None = None
    ):
        super().__init__()
        self.in_linear = nn.Linear(1, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.s5 = S5Layer(dim, state_dim, backend=backend, chunk_size=chunk_size)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.out_linear = nn.Linear(dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_linear(x)
        x = x + F.gelu(self.s5(self.norm1(x)))
        x = x + self.ff(self.norm2(x))
        return self.out_linear(x)
