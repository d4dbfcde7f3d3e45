"""S4 with a diagonal-plus-low-rank (DPLR) state matrix, HiPPO-LegS initialisation, bilinear
discretisation (Gu et al., S4, ICLR 2022, Sec. 3) and SMR on the input (ours: before the kernel convolution).

In the eigenbasis of HiPPO-LegS's normal part, ``A = Lambda - P P^H`` (``N/2`` kept modes, their
conjugates implied), ``B`` and ``C`` complex. Bilinear discretisation with step ``dt``::

    A_bar = (I - dt/2 A)^{-1} (I + dt/2 A),   B_bar = (I - dt/2 A)^{-1} dt B,   K_l = C A_bar^l B_bar

Convolution mode evaluates the truncated generating function at the ``L``-th roots of unity
``z`` (``C~ = C (I - A_bar^L)``)::

    K^(z) = C~ (I - A_bar z)^{-1} B_bar = dt C~ [(1 - z) I - dt/2 (1 + z) A]^{-1} B

and inverts the rank-1 term with the Woodbury identity (``D_z = (1 - z) - dt/2 (1 + z) Lambda``,
``c = dt/2 (1 + z)``)::

    K^(z) = dt [k00 - c k01 k10 / (1 + c k11)],   k_ab = sum_n a_n b_n / D_z,n

(Cauchy sums over all ``N`` modes, conjugates included), then ``K = irfft(K^)``. This form has no
``2 / (1 + z)`` factor, so ``z = -1`` needs no special case. ``C`` is the true output matrix (S4
learns ``C~`` for one fixed length; here ``C~`` is computed for each ``L`` from ``A_bar^L``, so one
model serves every length and its recurrence uses ``C`` directly). Recurrent mode and :meth:`S4.step`
apply the bilinear step in ``O(N)`` with the same Woodbury identity and equal the convolution (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from papers_shared.ssm.modules import (
    LTISSM,
    complex_dtype,
    default_complex,
    hippo_legs,
    hippo_normal_eig,
    prepare_input,
    real_param,
    tag,
)
from smr_ssm.layers.hosts import SMRHost, install_smr

__all__ = ["S4", "S4State"]


@dataclass
class S4State:
    """Decoding state: complex state over all ``N`` modes ``(B, H, N)`` and the SMR ring buffer."""

    x: torch.Tensor
    cache: Any = None


def _full(x: torch.Tensor) -> torch.Tensor:
    """Kept modes -> all modes (append the conjugates)."""
    return torch.cat([x, x.conj()], dim=-1)


class S4(SMRHost, LTISSM):
    """S4 (DPLR) layer with optional SMR; same interface as :class:`~smr_ssm.layers.hosts.S4D`."""

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
    ) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even int >= 2, got {d_state}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        H, N2 = d_model, d_state // 2
        self.d_model, self.d_state, self.transposed, self.bidirectional, self.mode = (
            H,
            d_state,
            transposed,
            bidirectional,
            mode,
        )
        lam, V = hippo_normal_eig(d_state)
        _, P, B = hippo_legs(d_state)
        Vh = V[:, :N2].conj().transpose(0, 1)
        P_t = Vh @ P.to(torch.complex128)
        B_t = Vh @ B.to(torch.complex128)
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = tag(nn.Parameter(log_dt), "ssm")
        self.log_A_real = tag(nn.Parameter(real_param(torch.log(-lam[:N2].real).repeat(H, 1))), "ssm")
        self.A_imag = tag(nn.Parameter(real_param(lam[:N2].imag.repeat(H, 1))), "ssm")
        self.P = tag(nn.Parameter(real_param(P_t.repeat(H, 1))), "ssm")
        self.B = tag(nn.Parameter(real_param(B_t.repeat(H, 1))), "ssm")
        channels = 2 if bidirectional else 1
        self.C = nn.Parameter(real_param(torch.randn(channels, H, N2, dtype=default_complex())))
        self.D = nn.Parameter(torch.randn(H))
        install_smr(self, H, smr)

    def _system(self, dtype):
        """Full-mode ``(Lambda, P, B, C)`` and ``dt``: ``(H, N)``, ``(H, N)``, ``(H, N)``, ``(c, H, N)``, ``(H,)``."""
        cd = complex_dtype(dtype)
        lam = _full(torch.complex(-torch.exp(self.log_A_real), self.A_imag).to(cd))
        P = _full(torch.view_as_complex(self.P).to(cd))
        B = _full(torch.view_as_complex(self.B).to(cd))
        C = _full(torch.view_as_complex(self.C).to(cd))
        return lam, P, B, C, torch.exp(self.log_dt).to(dtype)

    def _transition_power(self, lam, P, dt, L):
        """``A_bar^L`` (dense, ``(..., H, N, N)``) for ``C~ = C (I - A_bar^L)``."""
        N = lam.shape[-1]
        eye = torch.eye(N, dtype=lam.dtype, device=lam.device)
        A = torch.diag_embed(lam) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)
        half = (dt / 2).unsqueeze(-1).unsqueeze(-1).to(lam.dtype)
        A_bar = torch.linalg.solve(eye - half * A, eye + half * A)
        return torch.linalg.matrix_power(A_bar, L)

    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """Convolution kernel ``(channels, H, L)`` (``(B, channels, H, L)`` with a per-sequence rate)."""
        dtype = self.log_dt.dtype
        lam, P, B, C, dt = self._system(dtype)
        if rate is not None:
            dt = dt * rate.to(dtype)[:, None]  # (Bt, H)
        Ct = C - torch.einsum("chn,...hnm->...chm", C, self._transition_power(lam, P, dt, L))
        F_ = L // 2 + 1
        z = torch.exp(-2j * math.pi * torch.arange(F_, device=lam.device, dtype=dtype) / L).to(
            lam.dtype
        )  # (F,)
        half = (dt / 2).to(lam.dtype).unsqueeze(-1)  # (..., H, 1)
        c = half * (1 + z)  # (..., H, F)
        Dz = (1 - z).unsqueeze(-1) - c.unsqueeze(-1) * lam.unsqueeze(-2)  # (..., H, F, N)
        inv = 1.0 / Dz
        Pc = P.conj()
        k00 = torch.einsum("...chn,...hfn->...chf", Ct * B.unsqueeze(-3), inv)
        k01 = torch.einsum("...chn,...hfn->...chf", Ct * P.unsqueeze(-3), inv)
        k10 = torch.einsum("hn,...hfn->...hf", Pc * B, inv)
        k11 = torch.einsum("hn,...hfn->...hf", Pc * P, inv)
        cc = c.unsqueeze(-3)
        Kf = half.unsqueeze(-3) * 2 * (k00 - cc * k01 * k10.unsqueeze(-3) / (1 + cc * k11.unsqueeze(-3)))
        return torch.fft.irfft(Kf, n=L)

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        y, uf = self.lti_forward(u, ts, mode or self.mode)
        y = (y + self.skip(u, uf)).to(u.dtype)
        return y.transpose(1, 2) if self.transposed else y

    def _bilinear_step(self, x, v, lam, P, B, dt):
        """``x <- (I - dt/2 A)^{-1} [(I + dt/2 A) x + dt B v]`` in ``O(N)`` (Woodbury); ``dt``: ``(B, H)``."""
        h = (dt / 2).unsqueeze(-1).to(x.dtype)  # (B, H, 1)
        Pc = P.conj()
        w = x + h * (lam * x - P * (Pc * x).sum(-1, keepdim=True)) + 2 * h * B * v.unsqueeze(-1).to(x.dtype)
        d = 1.0 - h * lam
        wd, pd = w / d, P / d
        return wd - pd * (h * (Pc * wd).sum(-1, keepdim=True)) / (1.0 + h * (Pc * pd).sum(-1, keepdim=True))

    def recurrent_direction(self, v, ts, channel):
        lam, P, B, C, dt = self._system(v.dtype)
        Bsz, L, H = v.shape
        x = torch.zeros(Bsz, H, self.d_state, dtype=lam.dtype, device=v.device)
        dts = dt.expand(Bsz, H) if ts is None else None
        ys = []
        for k in range(L):
            step_dt = dts if ts is None else ts[:, k, None] * dt
            x = self._bilinear_step(x, v[:, k], lam, P, B, step_dt)
            ys.append((x * C[channel]).sum(-1).real)
        return torch.stack(ys, dim=1)

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S4State:
        device = device if device is not None else self.log_dt.device
        dtype = dtype or self.log_dt.dtype
        x = torch.zeros(batch_size, self.d_model, self.d_state, device=device, dtype=complex_dtype(dtype))
        return S4State(x, self.allocate_modulation_cache(batch_size, device, dtype))

    def step(self, u_t: torch.Tensor, state: S4State | None = None, timestep: torch.Tensor | None = None):
        self._check_step(u_t)
        if state is None:
            state = self.allocate_state(u_t.shape[0], u_t.device, u_t.dtype)
        v, state.cache = self.modulate_step(u_t, state.cache)
        lam, P, B, C, dt = self._system(u_t.dtype)
        dt = dt.expand(u_t.shape[0], -1) if timestep is None else timestep.to(u_t.dtype)[:, None] * dt
        state.x = self._bilinear_step(state.x, v, lam, P, B, dt)
        y = (state.x * C[0]).sum(-1).real + self.skip(u_t, v)
        return y.to(u_t.dtype), state
