"""Mega hosts (Mega is one of the SSMs the paper applies SMR to; SMR on the EMA input is our placement):
the multi-dimensional damped EMA (Ma et al., Mega, ICLR 2023, Sec. 3.1) with SMR on its input, and a
single-head moving-average gated attention layer built on it.

Damped EMA, per channel ``h`` and EMA dimension ``e`` (``E = ndim``)::

    h_t = alpha (beta u~_t) + (1 - alpha delta) h_{t-1},   y_t = eta^T h_t / sqrt(E) + omega u_t

with ``alpha = sigmoid(.)``, ``delta = sigmoid(.)``; as an LTI system it is the convolution with
``k_l = sum_e eta_e alpha_e beta_e q_e^l / sqrt(E)``, ``q = 1 - alpha delta``. SMR acts on the input
before the expansion ``beta`` (``u~ = SMR(u)``). With relative timesteps ``tau_k`` the decay becomes
``q^tau_k`` and the input gain ``beta (1 - q^tau_k) / delta`` (equal to ``alpha beta`` at ``tau = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from papers_shared.ssm.modules import LTISSM, SCAN_MODES, linear_scan, prepare_input, tag
from smr_ssm.layers.attention import KVCache, chunked_attention
from smr_ssm.layers.hosts import SMRHost, install_smr

__all__ = ["MegaEMA", "MegaEMAState", "MegaLayer", "MegaLayerState"]


@dataclass
class MegaEMAState:
    h: torch.Tensor  # (B, H, E)
    cache: Any = None


class MegaEMA(SMRHost, LTISSM):
    """Multi-dimensional damped EMA (Mega) with SMR on its input.

    Args: ``d_model``, ``ndim`` (E), ``smr``, ``bidirectional`` (a second set of EMA parameters reads
    the reversed sequence, own SMR; outputs summed), ``mode`` (``"auto"``, ``"conv"``, ``"recurrent"``),
    ``scan_mode``.
    """

    def __init__(
        self,
        d_model: int,
        ndim: int = 16,
        smr=None,
        bidirectional: bool = False,
        mode: str = "auto",
        scan_mode: str = "chunked",
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"scan_mode must be one of {SCAN_MODES}, got {scan_mode!r}")
        H, E = d_model, ndim
        c = 2 if bidirectional else 1
        self.d_model, self.ndim, self.bidirectional, self.mode, self.scan_mode = (
            H,
            E,
            bidirectional,
            mode,
            scan_mode,
        )
        self.alpha = tag(nn.Parameter(torch.randn(c, H, E) * 0.2), "ssm")
        self.delta = tag(nn.Parameter(torch.randn(c, H, E) * 0.2), "ssm")
        sign = torch.ones(E)
        sign[1::2] = -1.0
        self.beta = nn.Parameter(torch.randn(c, H, E) * 0.02 + sign)
        self.eta = nn.Parameter(torch.randn(c, H, E))
        self.omega = nn.Parameter(torch.randn(H))
        install_smr(self, H, smr)

    def _coeffs(self, dtype):
        a, d = torch.sigmoid(self.alpha.to(dtype)), torch.sigmoid(self.delta.to(dtype))
        q = 1.0 - a * d
        return a, d, q, self.beta.to(dtype), self.eta.to(dtype) / math.sqrt(self.ndim)

    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """EMA kernel ``(channels, H, L)`` (``(B, channels, H, L)`` with a per-sequence ``rate``)."""
        dtype = self.alpha.dtype
        a, d, q, beta, eta = self._coeffs(dtype)
        if rate is None:
            logq, gain = torch.log(q), a * beta
        else:
            r = rate.to(dtype)[:, None, None, None]
            logq = torch.log(q) * r
            gain = beta * (1.0 - torch.exp(logq)) / d
        powers = torch.exp(logq.unsqueeze(-1) * torch.arange(L, device=q.device, dtype=dtype))
        return torch.einsum("...hel,...he->...hl", powers, eta * gain)

    def recurrent_direction(self, v, ts, c):
        a, d, q, beta, eta = self._coeffs(v.dtype)
        a, d, q, beta, eta = a[c], d[c], q[c], beta[c], eta[c]
        if ts is None:
            decay, gain = q[None, None], (a * beta)[None, None]
        else:
            decay = torch.exp(torch.log(q) * ts[..., None, None])  # (B, L, H, E)
            gain = beta * (1.0 - decay) / d
        h = linear_scan(decay, gain * v.unsqueeze(-1), mode=self.scan_mode)
        return (h * eta).sum(-1)

    def forward(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        u, ts = prepare_input(u, self.d_model, False, timesteps)
        y, _ = self.lti_forward(u, ts, mode or self.mode)
        return (y + self.omega.to(u.dtype) * u).to(u.dtype)

    def states(self, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """EMA states ``(B, L, H, E)`` of the forward direction (after SMR)."""
        u, ts = prepare_input(u, self.d_model, False, timesteps)
        v = self.modulation(u) if self.modulation is not None else u
        a, d, q, beta, _ = self._coeffs(v.dtype)
        if ts is None:
            decay, gain = q[0][None, None], (a[0] * beta[0])[None, None]
        else:
            decay = torch.exp(torch.log(q[0]) * ts[..., None, None])
            gain = beta[0] * (1.0 - decay) / d[0]
        return linear_scan(decay, gain * v.unsqueeze(-1), mode=self.scan_mode)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> MegaEMAState:
        device = device if device is not None else self.alpha.device
        dtype = dtype or self.alpha.dtype
        h = torch.zeros(batch_size, self.d_model, self.ndim, device=device, dtype=dtype)
        return MegaEMAState(h, self.allocate_modulation_cache(batch_size, device, dtype))

    def step(
        self, u_t: torch.Tensor, state: MegaEMAState | None = None, timestep: torch.Tensor | None = None
    ):
        if self.bidirectional:
            raise RuntimeError(
                "a bidirectional EMA reads future inputs: it has no step-by-step (decoding) mode"
            )
        if state is None:
            state = self.allocate_state(u_t.shape[0], u_t.device, u_t.dtype)
        v, state.cache = self.modulate_step(u_t, state.cache)
        a, d, q, beta, eta = (t[0] for t in self._coeffs(u_t.dtype))
        if timestep is None:
            decay, gain = q, a * beta
        else:
            decay = torch.exp(torch.log(q) * timestep.to(u_t.dtype)[:, None, None])
            gain = beta * (1.0 - decay) / d
        state.h = decay * state.h + gain * v.unsqueeze(-1)
        y = (state.h * eta).sum(-1) + self.omega.to(u_t.dtype) * u_t
        return y, state


@dataclass
class MegaLayerState:
    ema: MegaEMAState
    kv: KVCache


class MegaLayer(nn.Module):
    """Single-head moving-average gated attention (Mega, Ma et al. 2023), simplified: softmax attention
    (optionally inside chunks, Mega-chunk), per-dimension affine ``q, k`` from the shared ``z``, reset gate
    ``r``, update gate ``u``. Returns ``u * (h - x)`` so that the block's residual gives Mega's
    ``x + u * (h - x)``. SMR sits inside :class:`MegaEMA` (ours). ``attention=False`` gives the
    EMA-only sub-layer ``SiLU(EMA(x))``.
    """

    def __init__(
        self,
        d_model: int,
        ndim: int = 16,
        z_dim: int | None = None,
        v_dim: int | None = None,
        chunk_size: int | None = None,
        attention: bool = True,
        smr=None,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        H = d_model
        self.d_model, self.attention, self.chunk_size, self.causal = (
            H,
            attention,
            chunk_size,
            not bidirectional,
        )
        self.z_dim = z_dim or max(8, H // 2)
        self.v_dim = v_dim or H
        self.ema = MegaEMA(H, ndim, smr=smr, bidirectional=bidirectional)
        if attention:
            self.v_proj = nn.Linear(H, self.v_dim)
            self.mx_proj = nn.Linear(H, H + self.z_dim + self.v_dim + H)
            self.qk_gamma = nn.Parameter(torch.randn(2, self.z_dim) * 0.02 + 1.0)
            self.qk_beta = nn.Parameter(torch.zeros(2, self.z_dim))
            self.h_proj = nn.Linear(self.v_dim, H)

    @property
    def smr(self):
        return self.ema.smr

    def _gated(self, x, mx):
        base = self.mx_proj(mx)
        u, z, r, hx = torch.split(base, [self.d_model, self.z_dim, self.v_dim, self.d_model], dim=-1)
        return torch.sigmoid(u), F.silu(z), F.silu(r), hx

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        mx = F.silu(self.ema(x, timesteps))
        if not self.attention:
            return mx
        u, z, r, hx = self._gated(x, mx)
        q = (z * self.qk_gamma[0] + self.qk_beta[0]).unsqueeze(1)
        k = (z * self.qk_gamma[1] + self.qk_beta[1]).unsqueeze(1)
        v = F.silu(self.v_proj(x)).unsqueeze(1)
        att = chunked_attention(q, k, v, self.chunk_size, causal=self.causal).squeeze(1)
        h = F.silu(hx + self.h_proj(att * r))
        return u * (h - x)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> MegaLayerState:
        return MegaLayerState(self.ema.allocate_state(batch_size, device, dtype), KVCache())

    def step(
        self, x_t: torch.Tensor, state: MegaLayerState | None = None, timestep: torch.Tensor | None = None
    ):
        if not self.causal:
            raise RuntimeError("a bidirectional Mega layer has no step-by-step (decoding) mode")
        if state is None:
            state = self.allocate_state(x_t.shape[0], x_t.device, x_t.dtype)
        y, state.ema = self.ema.step(x_t, state.ema, timestep)
        mx = F.silu(y)
        if not self.attention:
            return mx, state
        u, z, r, hx = self._gated(x_t, mx)
        q = (z * self.qk_gamma[0] + self.qk_beta[0])[:, None, None]
        k = (z * self.qk_gamma[1] + self.qk_beta[1])[:, None, None]
        v = F.silu(self.v_proj(x_t))[:, None, None]
        if self.chunk_size and state.kv.pos % self.chunk_size == 0:
            state.kv = KVCache(pos=state.kv.pos)
        ks, vs = state.kv.append(k, v, None)
        att = F.scaled_dot_product_attention(q, ks, vs)[:, 0, 0]
        h = F.silu(hx + self.h_proj(att * r))
        return u * (h - x_t), state
