"""Mamba (S6) mixer with SMR (spec §3.1 row S6/Mamba, §3.5 ``smr_position``).

Parameterisation and initialisation follow state-spaces/mamba's ``Mamba`` block: ``in_proj``
(``d -> 2 d_inner``), depthwise causal ``conv1d`` (width ``d_conv``) + SiLU, ``x_proj``
(``d_inner -> dt_rank + 2N``), ``dt_proj`` (``dt_rank -> d_inner``; bias = inverse softplus of
``dt ~ logU[dt_min, dt_max]`` floored at ``dt_init_floor``), ``A_log = log(1..N)``, ``D = 1``,
``out_proj``. The selective scan::

    Delta = softplus(dt_proj(x_proj(x)_dt) + bias) [* tau_k],   B_k, C_k = x_proj(x)_{B, C}
    h_k = exp(Delta_k A) h_{k-1} + Delta_k B_k u_k,   y_k = C_k h_k + D u_k,   y <- y * SiLU(z)

runs in :func:`papers_shared.ssm.ops.selective_scan` (chunked PyTorch scan on CPU, mamba-ssm's CUDA
kernel when it imports and the tensors are on CUDA).

SMR positions (spec §3.5): ``"pre_proj"`` (default) sets ``x <- SMR(x)`` after the convolution so
``Delta, B, C`` and the scanned input all see the replayed sequence; ``"scan_only"`` computes
``Delta, B, C`` from the raw ``x`` and scans ``u~``. With ``skip_uses="raw"`` the skip ``D * x_raw``
and the ``SiLU(z)`` gate are applied outside the scan (``D=None, z=None`` passed to it), which is
what the CUDA kernel needs as well, since it adds ``D * u`` with the scanned ``u``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from papers_shared.device import kernel_available
from smr_ssm.layers._base import prepare_input, tag
from smr_ssm.ops.selective_scan import selective_scan
from smr_ssm.smr import SMRCache, build_smr

__all__ = ["MambaCache", "MambaMixer"]


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16/float32 parameters (as mamba-ssm), float64 kept."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class MambaCache:
    """Decoding state: last ``d_conv`` pre-convolution inputs ``(B, d_inner, d_conv)``, SSM state
    ``(B, d_inner, N)`` and the SMR ring buffer."""

    conv: torch.Tensor
    ssm: torch.Tensor
    smr: SMRCache | None = None


class MambaMixer(nn.Module):
    """Mamba (S6) mixer with optional SMR (spec §7 signature).

    Args:
        d_model, d_state, d_conv, expand, dt_rank (``"auto"`` = ``ceil(d_model / 16)``), dt_min,
        dt_max, dt_scale, dt_init_floor, conv_bias, bias: as state-spaces/mamba's ``Mamba``.
        smr: ``None`` (baseline), a preset name or a dict (SMR over ``d_inner`` channels).
        smr_position: ``"pre_proj"`` (default) or ``"scan_only"``.
        scan_backend: ``"auto"``, ``"torch"``, ``"ref"`` or ``"cuda"`` (see :mod:`smr_ssm.ops.selective_scan`).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        smr=None,
        smr_position: str = "pre_proj",
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if smr_position not in ("pre_proj", "scan_only"):
            raise ValueError(f"smr_position must be 'pre_proj' or 'scan_only', got {smr_position!r}")
        if scan_backend not in ("auto", "torch", "ref", "cuda"):
            raise ValueError(f"scan_backend must be 'auto', 'torch', 'ref' or 'cuda', got {scan_backend!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.smr_position, self.scan_backend = smr_position, scan_backend
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        A = torch.arange(1, d_state + 1, dtype=torch.get_default_dtype()).repeat(di, 1)
        self.A_log = tag(nn.Parameter(torch.log(A)), "no_decay")
        self.D = tag(nn.Parameter(torch.ones(di)), "no_decay")
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        self.smr = build_smr(di, smr)

    # -- helpers ------------------------------------------------------------------------------------
    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise causal conv + SiLU on ``(B, d_inner, L)``; causal-conv1d's kernel on CUDA if present."""
        L = x.shape[-1]
        if x.is_cuda and kernel_available("causal_conv1d"):
            from causal_conv1d import causal_conv1d_fn

            return causal_conv1d_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        return F.silu(self.conv1d(x)[..., :L])

    def _delta_bc(self, x_bl: torch.Tensor):
        """``x_bl``: ``(B, L, d_inner)`` -> ``dt (B, d_inner, L)`` before bias/softplus, ``B, C (B, N, L)``."""
        x_dbl = self.x_proj(x_bl)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        return dt, Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous()

    def forward(self, hidden: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden``: ``(B, L, d_model)``; ``timesteps``: ``(B, L)`` relative steps scaling ``Delta``."""
        hidden, ts = prepare_input(hidden, self.d_model, False, timesteps)
        xz = self.in_proj(hidden)
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L)
        x = self._conv(x)
        x_raw = x
        x_bl = x.transpose(1, 2)
        if self.smr is not None:
            x_smr_bl = self.smr(x_bl)
            x_smr = x_smr_bl.transpose(1, 2)
            src = x_smr_bl if self.smr_position == "pre_proj" else x_bl
        else:
            x_smr, src = x, x_bl
        dt, Bm, Cm = self._delta_bc(src)
        A = -torch.exp(_at_least_f32(self.A_log))
        bias, softplus = _at_least_f32(self.dt_proj.bias), True
        if ts is not None:
            dt = F.softplus(dt + bias[None, :, None]) * ts[:, None, :].to(dt.dtype)
            bias, softplus = None, False
        raw_skip = self.smr is not None and self.smr.skip_uses == "raw"
        if raw_skip:
            y = selective_scan(x_smr, dt, A, Bm, Cm, None, None, bias, softplus, backend=self.scan_backend)
            y = (y + x_raw * self.D[None, :, None].to(y.dtype)) * F.silu(z)
        else:
            y = selective_scan(
                x_smr, dt, A, Bm, Cm, _at_least_f32(self.D), z, bias, softplus, backend=self.scan_backend
            )
        return self.out_proj(y.transpose(1, 2))

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> MambaCache:
        device = device if device is not None else self.A_log.device
        dtype = dtype or self.A_log.dtype
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)
        smr = self.smr.allocate_cache(batch_size, device, dtype) if self.smr is not None else None
        return MambaCache(conv, ssm, smr)

    def step(
        self, hidden_t: torch.Tensor, state: MambaCache | None = None, timestep: torch.Tensor | None = None
    ):
        """One token: ``hidden_t`` ``(B, d_model)`` -> ``(out_t, state)``; equals :meth:`forward` (tested)."""
        if hidden_t.ndim != 2 or hidden_t.shape[1] != self.d_model:
            raise ValueError(f"hidden_t must be (batch, {self.d_model}); got {tuple(hidden_t.shape)}")
        if state is None:
            state = self.allocate_state(hidden_t.shape[0], hidden_t.device, hidden_t.dtype)
        x, z = self.in_proj(hidden_t).chunk(2, dim=-1)  # (B, d_inner)
        state.conv = torch.cat([state.conv[:, :, 1:], x.unsqueeze(-1)], dim=-1)
        x = (state.conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        x_raw = x
        x_smr = x
        if self.smr is not None:
            x_smr, state.smr = self.smr.step(x, state.smr)
        src = x_smr if self.smr_position == "pre_proj" else x_raw
        dt, Bm, Cm = torch.split(self.x_proj(src), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        if timestep is not None:
            dt = dt * timestep.to(dt.dtype)[:, None]
        A = -torch.exp(self.A_log.to(dt.dtype))
        dA = torch.exp(dt.unsqueeze(-1) * A)
        state.ssm = state.ssm * dA + (dt * x_smr).unsqueeze(-1) * Bm.unsqueeze(1)
        skip = x_raw if (self.smr is None or self.smr.skip_uses == "raw") else x_smr
        y = (state.ssm * Cm.unsqueeze(1)).sum(-1) + self.D.to(dt.dtype) * skip
        y = y * F.silu(z)
        return self.out_proj(y), state
