"""S4D (diagonal S4, S4D-Lin initialisation) with SMR on the input of the state update (spec §3.1, §3.5).

Per channel ``h`` and mode ``n`` (``N/2`` complex modes, conjugate pairs implied)::

    A_n = -exp(log_A_real) + i A_imag,   dt = exp(log_dt),   B = 1
    ZOH:  A_bar = exp(dt A),   B_bar = (exp(dt A) - 1) / A
    K_l = 2 Re sum_n C_n B_bar_n A_bar_n^l                      (spec §3.1 kernel)
    y   = K * SMR(u) + D u                                       (spec §3.5, skip on the raw input)

Modes: ``"conv"`` (FFT, ``O(L log L)``), ``"recurrent"`` (diagonal linear scan), ``"auto"`` (conv
unless per-step ``timesteps`` make the system time-varying). With ``timesteps`` ``tau`` (relative
steps, spec §2), position ``k`` is discretised with ``dt * tau_k``; a row with a constant ``tau``
is still LTI and is convolved with the rescaled kernel. ``step`` decodes one position at a time
with the SMR ring buffer; it equals the convolution output (spec §3.6, tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from smr_ssm.layers._base import (
    complex_dtype,
    default_complex,
    lti_forward,
    prepare_input,
    real_param,
    skip_term,
    tag,
)
from smr_ssm.ops.scan import SCAN_MODES, linear_scan
from smr_ssm.smr import SMRCache, build_smr

__all__ = ["S4D", "S4DState", "vandermonde_kernel"]


@dataclass
class S4DState:
    """Decoding state: complex SSM state ``(B, H, N/2)`` and the SMR ring buffer."""

    x: torch.Tensor
    smr: SMRCache | None = None


def vandermonde_kernel(coef: torch.Tensor, dtA: torch.Tensor, L: int) -> torch.Tensor:
    """``K[..., l] = 2 Re sum_n coef[..., n] exp(dtA[..., n] l)`` for ``l < L``.

    The powers are split as ``l = q M + r`` (``M ~ sqrt(L)``): ``exp(dtA (qM + r)) = exp(dtA qM) exp(dtA r)``,
    so only ``N (Q + M)`` complex exponentials are taken and the sum over ``n`` is a batched matrix
    product ``(Q x N) @ (N x M)`` instead of a ``(N, L)`` Vandermonde matrix.
    ``coef``: ``(..., H, N)``, ``dtA``: broadcastable ``(..., H, N)``.
    """
    M = max(1, int(math.ceil(math.sqrt(L))))
    Q = -(-L // M)
    rdt = dtA.real.dtype
    r = torch.arange(M, device=dtA.device, dtype=rdt)
    q = torch.arange(Q, device=dtA.device, dtype=rdt) * M
    low = torch.exp(dtA.unsqueeze(-1) * r)  # (..., H, N, M)
    high = torch.exp(dtA.unsqueeze(-1) * q)  # (..., H, N, Q)
    coef, high = torch.broadcast_tensors(coef.unsqueeze(-1), high)
    k = torch.matmul((coef * high).transpose(-1, -2), low.expand(*high.shape[:-1], M))  # (..., H, Q, M)
    return 2.0 * k.real.reshape(*k.shape[:-2], Q * M)[..., :L]


class S4D(nn.Module):
    """Diagonal S4 layer with optional SMR (spec §3.1 row S4D; §3.5 insertion point).

    Args:
        d_model: channels ``H``.
        d_state: state size ``N`` (``N/2`` complex modes; even).
        dt_min, dt_max: range of the log-uniform ``dt`` initialisation.
        smr: ``None`` (no SMR: the baseline), a preset name of :data:`~smr_ssm.smr.SMR_PRESETS` or a dict.
        transposed: inputs/outputs are ``(B, H, L)`` instead of ``(B, L, H)``.
        bidirectional: add an anti-causal branch with its own ``C`` and its own SMR on the reversed
            sequence (outputs summed, as S4's bidirectional kernel).
        mode: ``"auto"``, ``"conv"`` or ``"recurrent"`` (default for :meth:`forward`).
        scan_mode: algorithm of the recurrent mode (:data:`~smr_ssm.ops.scan.SCAN_MODES`).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        smr=None,
        transposed: bool = False,
        bidirectional: bool = False,
        mode: str = "auto",
        scan_mode: str = "chunked",
    ) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even int >= 2, got {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if mode not in ("auto", "conv", "recurrent"):
            raise ValueError(f"mode must be 'auto', 'conv' or 'recurrent', got {mode!r}")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"scan_mode must be one of {SCAN_MODES}, got {scan_mode!r}")
        H, N2 = d_model, d_state // 2
        self.d_model, self.d_state = H, d_state
        self.transposed, self.bidirectional, self.mode, self.scan_mode = (
            transposed,
            bidirectional,
            mode,
            scan_mode,
        )
        channels = 2 if bidirectional else 1
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = tag(nn.Parameter(log_dt), "ssm")
        self.log_A_real = tag(nn.Parameter(torch.full((H, N2), math.log(0.5))), "ssm")
        self.A_imag = tag(
            nn.Parameter(math.pi * torch.arange(N2, dtype=torch.get_default_dtype()).repeat(H, 1)), "ssm"
        )
        self.C = nn.Parameter(real_param(torch.randn(channels, H, N2, dtype=default_complex())))
        self.D = nn.Parameter(torch.randn(H))
        self.smr = build_smr(H, smr)
        self.smr_bwd = build_smr(H, smr) if bidirectional else None

    # -- parameters -> discrete system -------------------------------------------------------------
    def _system(self, dtype: torch.dtype):
        cd = complex_dtype(dtype)
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag).to(cd)  # (H, N2)
        dt = torch.exp(self.log_dt).to(dtype)  # (H,)
        C = torch.view_as_complex(self.C.contiguous()).to(cd)  # (c, H, N2)
        return A, dt, C

    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """Convolution kernel ``K`` of spec §3.1: ``(channels, H, L)``, or ``(B, channels, H, L)`` when a
        per-sequence step ``rate`` ``(B,)`` rescales ``dt``."""
        dtype = self.log_dt.dtype
        A, dt, C = self._system(dtype)
        if rate is not None:
            dt = dt * rate.to(dtype)[:, None]  # (B, H)
            dt = dt[:, None]  # (B, 1, H)
        dtA = A * dt.unsqueeze(-1)  # (..., H, N2)
        coef = C * (torch.exp(dtA) - 1.0) / A  # C * B_bar
        return vandermonde_kernel(coef, dtA, L)

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        """``u``: ``(B, L, H)`` (``(B, H, L)`` if transposed); ``timesteps``: ``(B, L)`` or ``(L,)``."""
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        y, uf = lti_forward(self, u, ts, mode or self.mode, self._recurrent_direction)
        y = (y + skip_term(self, u, uf)).to(u.dtype)
        return y.transpose(1, 2) if self.transposed else y

    def _recurrent_direction(self, v, ts, channel):
        """Recurrent mode of one direction: ``(B, L, H)`` -> ``(B, L, H)``."""
        _, _, C = self._system(v.dtype)
        x = self.states(v, ts, smr=False)
        return 2.0 * torch.einsum("blhn,hn->blh", x, C[channel]).real

    def states(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, smr: bool = True
    ) -> torch.Tensor:
        """Complex hidden states ``x_k`` ``(B, L, H, N/2)`` of the forward direction (NSS diagnostics,
        spec §3.7). ``smr=True`` applies this layer's SMR to ``u`` first (as :meth:`forward` does)."""
        if smr:
            u, timesteps = prepare_input(u, self.d_model, False, timesteps)
            if self.smr is not None:
                u = self.smr(u)
        A, dt, _ = self._system(u.dtype)
        if timesteps is None:
            dtA = A * dt[:, None]  # (H, N2)
        else:
            dtA = A * (timesteps.to(u.dtype)[..., None] * dt)[..., None]  # (B, L, H, N2)
        dA = torch.exp(dtA)
        b = ((dA - 1.0) / A) * u.unsqueeze(-1)
        return linear_scan(dA if dA.ndim == 4 else dA[None, None], b, mode=self.scan_mode)

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S4DState:
        device = device if device is not None else self.log_dt.device
        dtype = dtype or self.log_dt.dtype
        x = torch.zeros(
            batch_size, self.d_model, self.d_state // 2, device=device, dtype=complex_dtype(dtype)
        )
        smr = self.smr.allocate_cache(batch_size, device, dtype) if self.smr is not None else None
        return S4DState(x, smr)

    def step(self, u_t: torch.Tensor, state: S4DState | None = None, timestep: torch.Tensor | None = None):
        """One recurrent step: ``u_t`` ``(B, H)`` -> ``(y_t, state)``; ``timestep``: ``(B,)`` relative step."""
        if self.bidirectional:
            raise RuntimeError(
                "a bidirectional S4D reads future inputs: it has no step-by-step (decoding) mode"
            )
        if u_t.ndim != 2 or u_t.shape[1] != self.d_model:
            raise ValueError(f"u_t must be (batch, {self.d_model}); got {tuple(u_t.shape)}")
        if state is None:
            state = self.allocate_state(u_t.shape[0], u_t.device, u_t.dtype)
        v = u_t
        if self.smr is not None:
            v, state.smr = self.smr.step(u_t, state.smr)
        A, dt, C = self._system(u_t.dtype)
        dt = dt if timestep is None else dt * timestep.to(u_t.dtype)[:, None]
        dtA = A * dt[..., None]
        dA = torch.exp(dtA)
        state.x = dA * state.x + ((dA - 1.0) / A) * v.unsqueeze(-1)
        y = 2.0 * (state.x * C[0]).sum(-1).real + skip_term(self, u_t, v)
        return y.to(u_t.dtype), state
