"""The Mamba (S6) block: a selective state space layer (Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces", Sec. 3 and Alg. 2), with the parameterisation and initialisation
of state-spaces/mamba @ 52f57d6 ``mamba_ssm/modules/mamba_simple.py:Mamba``.

``in_proj`` (``d -> 2 d_inner``), depthwise causal ``conv1d`` (width ``d_conv``) + SiLU, ``x_proj``
(``d_inner -> dt_rank + 2N``), ``dt_proj`` (``dt_rank -> d_inner``; bias = inverse softplus of
``dt ~ logU[dt_min, dt_max]`` floored at ``dt_init_floor``), ``A_log = log(1..N)``, ``D = 1``,
``out_proj``. The selective scan::

    Delta = softplus(dt_proj(x_proj(x)_dt) + bias) [* tau_k],   B_k, C_k = x_proj(x)_{B, C}
    h_k = exp(Delta_k A) h_{k-1} + Delta_k B_k x_k,   y_k = C_k h_k + D x_k,   out = out_proj(y * SiLU(z))

runs in :func:`papers_shared.ssm.ops.selective_scan` (the fused or chunked scan on CPU, mamba-ssm's CUDA
kernel when it imports and every tensor is on CUDA). A block with one input channel (``d_model = 1``,
no modulation, no timesteps, bias-free projections) on CPU runs whole in the compiled
:func:`papers_shared.ssm.ops.mamba_block.mamba_block_packed` with the ``"auto"``/``"fused"`` backends
(ours: speed; same values up to rounding); :meth:`Mamba.forward_packed` takes sequences of different
lengths packed end to end. Relative ``timesteps`` ``tau_k`` multiply
``Delta_k`` (ours).

Input modulation (:class:`~papers_shared.ssm.modules.base.ModulatedSSM`) acts on the convolved
activations ``x``: ``modulation_position="pre_proj"`` sets ``x <- modulation(x)`` before ``x_proj``, so
``Delta, B, C`` and the scanned input all see it; ``"scan_only"`` computes ``Delta, B, C`` from the raw
``x`` and scans the modulated one. Without ``skip_modulated`` the skip ``D * x_raw`` and the ``SiLU(z)``
gate are applied outside the scan (which is what the CUDA kernel needs as well, since it adds ``D * u``
with the scanned ``u``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from papers_shared.device import kernel_available
from papers_shared.ssm.modules.base import ModulatedSSM, prepare_input, tag
from papers_shared.ssm.ops import selective_scan
from papers_shared.ssm.ops.mamba_block import mamba_block_available, mamba_block_packed
from papers_shared.ssm.ops.selective_scan import BACKENDS  # ``backend`` values: the scan's own list

__all__ = ["BACKENDS", "Mamba", "MambaCache"]

_POSITIONS = ("pre_proj", "scan_only")


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16/float32 parameters (as mamba-ssm), float64 kept."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class MambaCache:
    """Decoding state: the last ``d_conv`` pre-convolution inputs ``(B, d_inner, d_conv)``, the SSM state
    ``(B, d_inner, N)`` and the modulation's cache (if any)."""

    conv: torch.Tensor
    ssm: torch.Tensor
    cache: Any = None


class Mamba(ModulatedSSM):
    """Mamba block without residual or norm (module docstring); input and output ``(B, L, d_model)``.

    Args:
        d_model, d_state, d_conv, expand, dt_rank (``"auto"`` = ``ceil(d_model / 16)``), dt_min, dt_max,
        dt_init (``"random"`` or ``"constant"`` ``dt_proj`` weights), dt_scale, dt_init_floor, conv_bias,
        bias: as state-spaces/mamba's ``Mamba``.
        backend: the selective scan's backend (:data:`BACKENDS`); chunk_size: its chunk length.
        modulation, modulation_position, skip_modulated: the input-modulation hook on ``d_inner``
            channels (module docstring).
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
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        chunk_size: int | None = None,
        modulation: nn.Module | None = None,
        modulation_position: str = "pre_proj",
        skip_modulated: bool = False,
    ) -> None:
        super().__init__()
        if min(d_model, d_state, d_conv, expand) < 1:
            raise ValueError("d_model, d_state, d_conv and expand must be >= 1")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if modulation_position not in _POSITIONS:
            raise ValueError(
                f"modulation_position must be one of {list(_POSITIONS)}, got {modulation_position!r}"
            )
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend, self.chunk_size, self.modulation_position = backend, chunk_size, modulation_position
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
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        A = torch.arange(1, d_state + 1, dtype=torch.get_default_dtype()).repeat(di, 1)
        self.A_log = tag(nn.Parameter(torch.log(A)), "no_decay")
        self.D = tag(nn.Parameter(torch.ones(di)), "no_decay")
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        self.set_modulation(modulation, None, skip_modulated)

    # -- helpers ------------------------------------------------------------------------------------
    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise causal conv + SiLU on ``(B, d_inner, L)``; causal-conv1d's kernel on CUDA if present."""
        L = x.shape[-1]
        if x.is_cuda and kernel_available("causal_conv1d"):
            from causal_conv1d import causal_conv1d_fn

            return causal_conv1d_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        return F.silu(self.conv1d(x)[..., :L])

    def _delta_bc(self, x_bl: torch.Tensor):
        """``x_bl`` ``(B, L, d_inner)`` -> ``dt`` ``(B, d_inner, L)`` before bias/softplus, ``B, C`` ``(B, N, L)``."""
        dt, Bm, Cm = torch.split(self.x_proj(x_bl), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        return dt, Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous()

    def _scan(self, u, dt, Bm, Cm, D, z, bias, softplus):
        return selective_scan(
            u, dt, -torch.exp(_at_least_f32(self.A_log)), Bm, Cm, D, z, bias, softplus,
            backend=self.backend, chunk_size=self.chunk_size,
        )  # fmt: skip

    def _block_kernel(self, x: torch.Tensor) -> bool:
        """Whether the whole block runs in the compiled one-channel kernel (module docstring)."""
        return (
            self.d_model == 1
            and self.modulation is None
            and self.backend in ("auto", "fused")
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and self.in_proj.bias is None
            and self.out_proj.bias is None
            and not self.A_log.is_complex()
            and mamba_block_available()
        )

    def _packed_kernel(self, u: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return mamba_block_packed(
            u, cu_seqlens, self.in_proj.weight, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
            self.dt_proj.weight, self.dt_proj.bias, -torch.exp(_at_least_f32(self.A_log)), self.D,
            self.out_proj.weight,
        )  # fmt: skip

    def forward_packed(self, u: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Sequences of different lengths packed end to end, for ``d_model = 1`` (ours).

        ``u``: ``(total,)``; ``cu_seqlens``: ``(num_seq + 1,)`` offsets (sequence ``i`` is
        ``u[cu[i]:cu[i+1]]``, each from a zero state). Returns ``(total,)``: per sequence exactly
        :meth:`forward` of ``u[cu[i]:cu[i+1]].view(1, -1, 1)``, in one kernel call where it runs
        (module docstring), else one :meth:`forward` per sequence.
        """
        if self.d_model != 1:
            raise ValueError(f"forward_packed needs d_model = 1; this block has d_model = {self.d_model}")
        if u.ndim != 1:
            raise ValueError(
                f"forward_packed expects packed sequences of shape (total,); got {tuple(u.shape)}"
            )
        cu = torch.as_tensor(cu_seqlens, dtype=torch.int64, device="cpu")
        if self._block_kernel(u):
            return self._packed_kernel(u, cu)
        bounds = cu.tolist()
        if bounds[0] != 0 or bounds[-1] != u.numel() or any(a > b for a, b in zip(bounds, bounds[1:])):
            raise ValueError("cu_seqlens must be non-decreasing offsets from 0 to u.numel()")
        parts = [self.forward(u[a:b].view(1, -1, 1)).view(-1) for a, b in zip(bounds, bounds[1:]) if b > a]
        return torch.cat(parts) if parts else u.new_zeros(0)

    def forward(self, hidden: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden``: ``(B, L, d_model)``; ``timesteps``: ``(B, L)`` relative steps scaling ``Delta``."""
        hidden, ts = prepare_input(hidden, self.d_model, False, timesteps)
        if ts is None and self._block_kernel(hidden) and hidden.shape[1] > 0:
            b, length = hidden.shape[:2]
            cu = torch.arange(b + 1, dtype=torch.int64) * length
            return self._packed_kernel(hidden.reshape(-1), cu).view(b, length, 1)
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L)
        x = self._conv(x)
        x_raw, x_bl = x, x.transpose(1, 2)
        if self.modulation is not None:
            v_bl = self.modulation(x_bl)
            v = v_bl.transpose(1, 2)
            src = v_bl if self.modulation_position == "pre_proj" else x_bl
        else:
            v, src = x, x_bl
        dt, Bm, Cm = self._delta_bc(src)
        bias, softplus = _at_least_f32(self.dt_proj.bias), True
        if ts is not None:
            dt = F.softplus(dt + bias[None, :, None]) * ts[:, None, :].to(dt.dtype)
            bias, softplus = None, False
        if self.modulation is not None and not self.skip_modulated:
            y = self._scan(v, dt, Bm, Cm, None, None, bias, softplus)
            y = (y + x_raw * self.D[None, :, None].to(y.dtype)) * F.silu(z)
        else:
            y = self._scan(v, dt, Bm, Cm, _at_least_f32(self.D), z, bias, softplus)
        return self.out_proj(y.transpose(1, 2))

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> MambaCache:
        device = device if device is not None else self.A_log.device
        dtype = dtype or self.A_log.dtype
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)
        return MambaCache(conv, ssm, self.allocate_modulation_cache(batch_size, device, dtype))

    def step(
        self, hidden_t: torch.Tensor, state: MambaCache | None = None, timestep: torch.Tensor | None = None
    ):
        """One token: ``hidden_t`` ``(B, d_model)`` -> ``(out_t, state)``; equals :meth:`forward`."""
        self._check_step(hidden_t, "hidden_t")
        if state is None:
            state = self.allocate_state(hidden_t.shape[0], hidden_t.device, hidden_t.dtype)
        x, z = self.in_proj(hidden_t).chunk(2, dim=-1)  # (B, d_inner)
        state.conv = torch.cat([state.conv[:, :, 1:], x.unsqueeze(-1)], dim=-1)
        x = (state.conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x_raw = F.silu(x)
        v, state.cache = self.modulate_step(x_raw, state.cache)
        src = v if self.modulation_position == "pre_proj" else x_raw
        dt, Bm, Cm = torch.split(self.x_proj(src), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        if timestep is not None:
            dt = dt * timestep.to(dt.dtype)[:, None]
        A = -torch.exp(self.A_log.to(dt.dtype))
        dA = torch.exp(dt.unsqueeze(-1) * A)
        state.ssm = state.ssm * dA + (dt * v).unsqueeze(-1) * Bm.unsqueeze(1)
        y = (state.ssm * Cm.unsqueeze(1)).sum(-1) + self.D.to(dt.dtype) * (
            v if self.skip_modulated else x_raw
        )
        return self.out_proj(y * F.silu(z)), state
