"""S5 (MIMO diagonal SSM, Smith et al. 2023) with SMR and per-step timesteps (spec §3.1, §3.5).

With ``P/2`` complex modes (conjugate symmetry, output ``2 Re``)::

    Lambda_bar_k = exp(Lambda * Delta_k),   B_bar_k = (Lambda_bar_k - 1) / Lambda * B~
    x_k = Lambda_bar_k * x_{k-1} + B_bar_k SMR(u)_k,   y_k = 2 Re(C~ x_k) + D * u_k

``Delta_k = exp(log_step) * tau_k`` when relative ``timesteps`` ``tau`` are given (the true steps of
irregularly sampled data: SMR is complementary to them, spec §3.5), else ``exp(log_step)``.
Initialisation: HiPPO-N eigenvalues (``blocks`` copies on the diagonal), ``B~ = V^H B`` with
``B`` LeCun-normal, ``C~ = C V`` with ``C`` standard normal, ``D ~ N(0, 1)``, ``log_step ~
U[log dt_min, log dt_max]``. The time-invariant case (no or constant timesteps) also has a MIMO
convolution form (:meth:`S5.kernel`, ``mode="conv"``), equal to the scan (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from smr_ssm.layers._base import (
    complex_dtype,
    constant_rate,
    direction_inputs,
    prepare_input,
    real_param,
    reverse_timesteps,
    skip_term,
    tag,
)
from smr_ssm.layers.hippo import hippo_normal_eig
from smr_ssm.ops.fftconv import fft_size
from smr_ssm.ops.scan import SCAN_MODES, linear_scan
from smr_ssm.smr import SMRCache, build_smr

__all__ = ["S5", "S5State"]


@dataclass
class S5State:
    """Decoding state: complex SSM state ``(B, P/2)`` and the SMR ring buffer."""

    x: torch.Tensor
    smr: SMRCache | None = None


class S5(nn.Module):
    """S5 layer (spec §3.1 row S5) with SMR in ``B_bar_k u~_k`` (spec §3.5).

    Args:
        d_model: input/output channels ``H``.
        d_state: latent size ``P`` (``P/2`` complex modes kept; even, divisible by ``2 * blocks``).
        blocks: number of HiPPO-N blocks on the diagonal of the initial ``Lambda``.
        dt_min, dt_max: range of the log-uniform step initialisation (one step per mode).
        smr: ``None`` (baseline), a preset name or a dict.
        bidirectional: a second ``C~`` reads the reversed sequence (own SMR); outputs summed.
        mode: ``"scan"`` (default; the recurrence) or ``"conv"`` (MIMO kernel, LTI only) or ``"auto"``.
        scan_mode: :data:`~smr_ssm.ops.scan.SCAN_MODES`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        blocks: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        smr=None,
        bidirectional: bool = False,
        mode: str = "scan",
        scan_mode: str = "chunked",
        transposed: bool = False,
    ) -> None:
        super().__init__()
        if d_state < 2 or d_state % (2 * blocks):
            raise ValueError(f"d_state={d_state} must be even and divisible by 2*blocks={2 * blocks}")
        if mode not in ("auto", "scan", "conv"):
            raise ValueError(f"mode must be 'auto', 'scan' or 'conv', got {mode!r}")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"scan_mode must be one of {SCAN_MODES}, got {scan_mode!r}")
        H, P = d_model, d_state
        self.d_model, self.d_state, self.mode, self.scan_mode = H, P, mode, scan_mode
        self.bidirectional, self.transposed = bidirectional, transposed
        bs = P // blocks
        lam_b, V_b = hippo_normal_eig(bs)
        half = bs // 2
        lam = torch.cat([lam_b[:half]] * blocks)  # (P/2,)
        V = torch.block_diag(*[V_b[:, :half]] * blocks)  # (P, P/2): kept eigenvectors of each block
        B = torch.randn(P, H, dtype=torch.float64) / math.sqrt(H)  # LeCun normal
        B_t = V.conj().transpose(0, 1) @ B.to(torch.complex128)  # (P/2, H)
        channels = 2 if bidirectional else 1
        C = torch.complex(
            torch.randn(channels, H, P, dtype=torch.float64), torch.randn(channels, H, P, dtype=torch.float64)
        )
        C_t = C / math.sqrt(2.0) @ V  # (c, H, P/2)
        self.Lambda_re = tag(nn.Parameter(real_param(lam.real)), "ssm")
        self.Lambda_im = tag(nn.Parameter(real_param(lam.imag)), "ssm")
        self.B = tag(nn.Parameter(real_param(B_t)), "ssm")
        self.C = nn.Parameter(real_param(C_t))
        self.D = nn.Parameter(torch.randn(H))
        log_step = torch.rand(P // 2) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_step = tag(nn.Parameter(log_step), "ssm")
        self.smr = build_smr(H, smr)
        self.smr_bwd = build_smr(H, smr) if bidirectional else None

    def _system(self, dtype):
        cd = complex_dtype(dtype)
        lam = torch.complex(self.Lambda_re, self.Lambda_im).to(cd)
        B = torch.view_as_complex(self.B).to(cd)
        C = torch.view_as_complex(self.C).to(cd)
        step = torch.exp(self.log_step).to(dtype)
        return lam, B, C, step

    def _discretise(self, dtype, steps):
        """``(Lambda_bar, (Lambda_bar - 1)/Lambda)`` for steps broadcastable against ``(..., P/2)``."""
        lam, _, _, _ = self._system(dtype)
        lam_bar = torch.exp(lam * steps)
        return lam_bar, (lam_bar - 1.0) / lam

    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """MIMO convolution kernel ``K_l = 2 Re(C~ diag(Lambda_bar^l) B_bar)``: ``(channels, L, H, H)``
        (``(B, channels, L, H, H)`` with a per-sequence ``rate``)."""
        dtype = self.log_step.dtype
        lam, B, C, step = self._system(dtype)
        if rate is not None:
            step = step * rate.to(dtype)[:, None]  # (B, P/2)
        lam_bar = torch.exp(lam * step)
        B_bar = ((lam_bar - 1.0) / lam).unsqueeze(-1) * B  # (..., P/2, H)
        powers = lam_bar.unsqueeze(-2) ** torch.arange(L, device=lam.device, dtype=dtype).unsqueeze(
            -1
        )  # (..., L, P/2)
        if rate is not None:
            C, powers, B_bar = C[None], powers[:, None], B_bar[:, None]
        return 2.0 * torch.einsum("...hp,...lp,...pk->...lhk", C, powers, B_bar).real

    def _direction(self, v, ts, C):
        x = self._states(v, ts)
        return 2.0 * torch.einsum("blp,hp->blh", x, C).real

    def _states(self, v, ts):
        lam, B, _, step = self._system(v.dtype)
        Bu = torch.einsum("blh,ph->blp", v.to(B.dtype), B)  # (B, L, P/2)
        if ts is None:
            lam_bar, coef = self._discretise(v.dtype, step)
            a = lam_bar[None, None]
        else:
            lam_bar, coef = self._discretise(v.dtype, ts[..., None] * step)  # (B, L, P/2)
            a = lam_bar
        return linear_scan(a, coef * Bu, mode=self.scan_mode)

    def states(self, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Complex states ``x_k`` ``(B, L, P/2)`` of the forward direction (after SMR)."""
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        return self._states(self.smr(u) if self.smr is not None else u, ts)

    def forward(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        mode = mode or self.mode
        if mode not in ("auto", "scan", "conv"):
            raise ValueError(f"mode must be 'auto', 'scan' or 'conv', got {mode!r}")
        rate = constant_rate(ts)
        if mode == "conv" and ts is not None and rate is None:
            raise ValueError(
                "mode='conv' needs a time-invariant system: timesteps must be constant along each row"
            )
        uf, ub = direction_inputs(self, u, channels_first=False)
        if mode == "conv":
            y = self._conv(uf, ub, rate)
        else:
            _, _, C, _ = self._system(u.dtype)
            y = self._direction(uf, ts, C[0])
            if ub is not None:
                y = y + self._direction(ub, reverse_timesteps(ts), C[1]).flip(1)
        y = (y + skip_term(self, u, uf)).to(u.dtype)
        return y.transpose(1, 2) if self.transposed else y

    def _conv(self, uf, ub, rate):
        L = uf.shape[1]
        n = fft_size(2 * L - 1)
        K = self.kernel(L, rate).to(uf.dtype)  # (c, L, H, H) or (B, c, L, H, H)
        Kf = torch.fft.rfft(K, n=n, dim=-3)
        spec = "bfhk,bfk->bfh" if rate is not None else "fhk,bfk->bfh"

        def conv(v, c):
            yf = torch.einsum(spec, Kf[..., c, :, :, :], torch.fft.rfft(v, n=n, dim=1))
            return torch.fft.irfft(yf, n=n, dim=1)[:, :L]

        y = conv(uf, 0)
        if ub is not None:
            y = y + conv(ub, 1).flip(1)
        return y

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S5State:
        device = device if device is not None else self.log_step.device
        dtype = dtype or self.log_step.dtype
        x = torch.zeros(batch_size, self.d_state // 2, device=device, dtype=complex_dtype(dtype))
        smr = self.smr.allocate_cache(batch_size, device, dtype) if self.smr is not None else None
        return S5State(x, smr)

    def step(self, u_t: torch.Tensor, state: S5State | None = None, timestep: torch.Tensor | None = None):
        """One recurrent step ``u_t`` ``(B, H)`` -> ``(y_t, state)``; ``timestep``: ``(B,)``."""
        if self.bidirectional:
            raise RuntimeError(
                "a bidirectional S5 reads future inputs: it has no step-by-step (decoding) mode"
            )
        if u_t.ndim != 2 or u_t.shape[1] != self.d_model:
            raise ValueError(f"u_t must be (batch, {self.d_model}); got {tuple(u_t.shape)}")
        if state is None:
            state = self.allocate_state(u_t.shape[0], u_t.device, u_t.dtype)
        v = u_t
        if self.smr is not None:
            v, state.smr = self.smr.step(u_t, state.smr)
        lam, B, C, step = self._system(u_t.dtype)
        steps = step if timestep is None else timestep.to(u_t.dtype)[:, None] * step
        lam_bar, coef = self._discretise(u_t.dtype, steps)
        state.x = lam_bar * state.x + coef * (v.to(B.dtype) @ B.transpose(0, 1))
        y = 2.0 * (state.x @ C[0].transpose(0, 1)).real + skip_term(self, u_t, v)
        return y.to(u_t.dtype), state
