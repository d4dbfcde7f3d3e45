"""S5: a MIMO diagonal state space layer with per-step timesteps (Smith, Warrington, Linderman 2023,
"Simplified State Space Layers for Sequence Modeling", Sec. 3-4; official code lindermanlab/S5 @ d133f4d
``s5/ssm.py:S5SSM``).

``init="hippo"`` keeps ``P/2`` complex modes (conjugate symmetry, output ``2 Re``)::

    Lambda_bar_k = exp(Lambda Delta_k),   B_bar_k = (Lambda_bar_k - 1) / Lambda * B~
    x_k = Lambda_bar_k x_{k-1} + B_bar_k v_k,   y_k = 2 Re(C~ x_k) + D u_k      (v: the modulated input)

with the HiPPO-N eigenvalues (``blocks`` copies on the diagonal), ``B~ = V^H B`` (``B`` LeCun normal),
``C~ = C V`` (``C`` standard normal), ``D ~ N(0, 1)``, ``log_dt ~ U[log dt_min, log dt_max]`` per mode
(S5 Sec. 4.1 and Appendix B). ``init="real"`` keeps ``P`` real modes ``Lambda = -exp(A_log)``,
``A_log = log(1..P)``, ``B ~ N(0, 1/H)``, ``C ~ N(0, 1/P)`` and output ``C x + D u`` (ours: the
real-diagonal variant).

``Delta_k = exp(log_dt) * tau_k`` with relative ``timesteps`` ``tau`` (irregularly sampled data, S5
Sec. 6.3), else ``exp(log_dt)``. Without timesteps (or with a constant step per row) the layer is
time-invariant and also has a MIMO convolution form (``mode="conv"``, equal to the scan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from papers_shared.ssm.modules.base import (
    ModulatedSSM,
    complex_dtype,
    constant_rate,
    prepare_input,
    real_param,
    reverse_timesteps,
    tag,
)
from papers_shared.ssm.modules.functional import SCAN_MODES, fft_size, linear_scan
from papers_shared.ssm.modules.hippo import hippo_normal_eig

__all__ = ["S5", "S5State"]

_INITS = ("hippo", "real")
_MODES = ("auto", "scan", "conv")


@dataclass
class S5State:
    """Decoding state: the SSM state ``(B, modes)`` and the modulation's cache (if any)."""

    x: torch.Tensor
    cache: Any = None


def _re(x: torch.Tensor) -> torch.Tensor:
    return x.real if x.is_complex() else x


class S5(ModulatedSSM):
    """S5 layer (module docstring).

    Args:
        d_model: input/output channels ``H``.
        d_state: latent size ``P`` (``init="hippo"``: ``P/2`` complex modes kept, ``P`` divisible by
            ``2 * blocks``).
        blocks: HiPPO-N blocks on the diagonal of the initial ``Lambda`` (``init="hippo"``).
        dt_min, dt_max: range of the log-uniform step initialisation (one step per mode).
        init: ``"hippo"`` (complex, HiPPO-N) or ``"real"`` (real diagonal).
        bidirectional: a second ``C~`` reads the reversed sequence; outputs summed.
        mode: ``"scan"`` (the recurrence, default), ``"conv"`` (MIMO kernel, time-invariant only) or
            ``"auto"``.
        scan_mode: :data:`~papers_shared.ssm.modules.functional.SCAN_MODES`.
        transposed: inputs/outputs ``(B, H, L)``.
        modulation, modulation_bwd, skip_modulated: the input-modulation hook
            (:class:`~papers_shared.ssm.modules.base.ModulatedSSM`).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        blocks: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "hippo",
        bidirectional: bool = False,
        mode: str = "scan",
        scan_mode: str = "chunked",
        transposed: bool = False,
        modulation: nn.Module | None = None,
        modulation_bwd: nn.Module | None = None,
        skip_modulated: bool = False,
    ) -> None:
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {list(_INITS)}, got {init!r}")
        if init == "hippo" and (d_state < 2 or blocks < 1 or d_state % (2 * blocks)):
            raise ValueError(f"d_state={d_state} must be even and divisible by 2*blocks={2 * blocks}")
        if d_model < 1 or d_state < 1:
            raise ValueError(f"d_model and d_state must be >= 1, got {d_model}, {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"scan_mode must be one of {list(SCAN_MODES)}, got {scan_mode!r}")
        H, P = d_model, d_state
        self.d_model, self.d_state, self.init, self.mode, self.scan_mode = H, P, init, mode, scan_mode
        self.bidirectional, self.transposed = bidirectional, transposed
        channels = 2 if bidirectional else 1
        log_range = math.log(dt_max) - math.log(dt_min)
        if init == "hippo":
            bs = P // blocks
            lam_b, V_b = hippo_normal_eig(bs)
            half = bs // 2
            lam = torch.cat([lam_b[:half]] * blocks)  # (P/2,)
            V = torch.block_diag(*[V_b[:, :half]] * blocks)  # (P, P/2): kept eigenvectors of each block
            B = torch.randn(P, H, dtype=torch.float64) / math.sqrt(H)  # LeCun normal
            B_t = V.conj().transpose(0, 1) @ B.to(torch.complex128)  # (P/2, H)
            C = torch.complex(
                torch.randn(channels, H, P, dtype=torch.float64),
                torch.randn(channels, H, P, dtype=torch.float64),
            )
            C_t = C / math.sqrt(2.0) @ V  # (c, H, P/2)
            self.Lambda_re = tag(nn.Parameter(real_param(lam.real)), "ssm")
            self.Lambda_im = tag(nn.Parameter(real_param(lam.imag)), "ssm")
            self.B = tag(nn.Parameter(real_param(B_t)), "ssm")
            self.C = nn.Parameter(real_param(C_t))
            self.D = nn.Parameter(torch.randn(H))
            log_dt = torch.rand(P // 2) * log_range + math.log(dt_min)
            self.log_dt = tag(nn.Parameter(log_dt), "ssm")
        else:
            log_dt = torch.rand(P) * log_range + math.log(dt_min)
            self.log_dt = tag(nn.Parameter(log_dt), "ssm")
            self.B = tag(nn.Parameter(torch.randn(P, H) / math.sqrt(H)), "ssm")
            self.C = nn.Parameter(torch.randn(channels, H, P) / math.sqrt(P))
            self.D = nn.Parameter(torch.randn(H))
            self.A_log = tag(
                nn.Parameter(torch.log(torch.arange(1, P + 1, dtype=torch.get_default_dtype()))), "ssm"
            )
        self.set_modulation(modulation, modulation_bwd, skip_modulated)

    @property
    def modes(self) -> int:
        return self.d_state // 2 if self.init == "hippo" else self.d_state

    @property
    def _factor(self) -> float:
        return 2.0 if self.init == "hippo" else 1.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a one-direction C may come without its direction axis (e.g. a real S5 stored as (H, P))
        key = prefix + "C"
        if key in state_dict and state_dict[key].ndim == self.C.ndim - 1 and self.C.shape[0] == 1:
            state_dict[key] = state_dict[key].unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _system(self, dtype):
        """``(Lambda, B, C, step)``: ``(modes,)``, ``(modes, H)``, ``(c, H, modes)``, ``(modes,)``."""
        step = torch.exp(self.log_dt).to(dtype)
        if self.init == "hippo":
            cd = complex_dtype(dtype)
            lam = torch.complex(self.Lambda_re, self.Lambda_im).to(cd)
            return lam, torch.view_as_complex(self.B).to(cd), torch.view_as_complex(self.C).to(cd), step
        return -torch.exp(self.A_log.to(dtype)), self.B.to(dtype), self.C.to(dtype), step

    def _discretise(self, dtype, steps):
        """``(Lambda_bar, (Lambda_bar - 1) / Lambda)`` for steps broadcastable against ``(..., modes)``."""
        lam, _, _, _ = self._system(dtype)
        lam_bar = torch.exp(lam * steps)
        return lam_bar, (lam_bar - 1.0) / lam

    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """MIMO kernel ``K_l = c Re(C~ diag(Lambda_bar^l) B_bar)``: ``(channels, L, H, H)``
        (``(B, channels, L, H, H)`` with a per-sequence ``rate``)."""
        dtype = self.log_dt.dtype
        lam, B, C, step = self._system(dtype)
        if rate is not None:
            step = step * rate.to(dtype)[:, None]  # (B, modes)
        lam_bar = torch.exp(lam * step)
        B_bar = ((lam_bar - 1.0) / lam).unsqueeze(-1) * B  # (..., modes, H)
        powers = lam_bar.unsqueeze(-2) ** torch.arange(L, device=lam.device, dtype=dtype).unsqueeze(-1)
        if rate is not None:
            C, powers, B_bar = C[None], powers[:, None], B_bar[:, None]
        return self._factor * _re(torch.einsum("...hp,...lp,...pk->...lhk", C, powers, B_bar))

    def _direction(self, v, ts, C):
        return self._factor * _re(torch.einsum("blp,hp->blh", self._states(v, ts), C))

    def _states(self, v, ts):
        lam, B, _, step = self._system(v.dtype)
        Bu = torch.einsum("blh,ph->blp", v.to(B.dtype), B)  # (B, L, modes)
        if ts is None:
            lam_bar, coef = self._discretise(v.dtype, step)
            a = lam_bar[None, None]
        else:
            lam_bar, coef = self._discretise(v.dtype, ts[..., None] * step)  # (B, L, modes)
            a = lam_bar
        return linear_scan(a, coef * Bu, mode=self.scan_mode)

    def states(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, modulated: bool = True
    ) -> torch.Tensor:
        """States ``x_k`` ``(B, L, modes)`` of the forward direction (after the modulation unless
        ``modulated=False``)."""
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        v = self.modulation(u) if (modulated and self.modulation is not None) else u
        return self._states(v, ts)

    def forward(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        mode = mode or self.mode
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
        rate = constant_rate(ts)
        if mode == "conv" and ts is not None and rate is None:
            raise ValueError(
                "mode='conv' needs a time-invariant system: timesteps must be constant along each row"
            )
        vf, vb = self.direction_inputs(u, channels_first=False)
        if mode == "conv":
            y = self._conv(vf, vb, rate)
        else:
            _, _, C, _ = self._system(u.dtype)
            y = self._direction(vf, ts, C[0])
            if vb is not None:
                y = y + self._direction(vb, reverse_timesteps(ts), C[1]).flip(1)
        y = (y + self.skip(u, vf)).to(u.dtype)
        return y.transpose(1, 2) if self.transposed else y

    def _conv(self, vf, vb, rate):
        L = vf.shape[1]
        n = fft_size(2 * L - 1)
        K = self.kernel(L, rate).to(vf.dtype)  # (c, L, H, H) or (B, c, L, H, H)
        Kf = torch.fft.rfft(K, n=n, dim=-3)
        spec = "bfhk,bfk->bfh" if rate is not None else "fhk,bfk->bfh"

        def conv(v, c):
            yf = torch.einsum(spec, Kf[..., c, :, :, :], torch.fft.rfft(v, n=n, dim=1))
            return torch.fft.irfft(yf, n=n, dim=1)[:, :L]

        y = conv(vf, 0)
        if vb is not None:
            y = y + conv(vb, 1).flip(1)
        return y

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S5State:
        device = device if device is not None else self.log_dt.device
        dtype = dtype or self.log_dt.dtype
        sdtype = complex_dtype(dtype) if self.init == "hippo" else dtype
        x = torch.zeros(batch_size, self.modes, device=device, dtype=sdtype)
        return S5State(x, self.allocate_modulation_cache(batch_size, device, dtype))

    def step(self, u_t: torch.Tensor, state: S5State | None = None, timestep: torch.Tensor | None = None):
        """One recurrent step ``u_t`` ``(B, H)`` -> ``(y_t, state)``; ``timestep``: ``(B,)``."""
        self._check_step(u_t)
        if state is None:
            state = self.allocate_state(u_t.shape[0], u_t.device, u_t.dtype)
        v, state.cache = self.modulate_step(u_t, state.cache)
        lam, B, C, step = self._system(u_t.dtype)
        steps = step if timestep is None else timestep.to(u_t.dtype)[:, None] * step
        lam_bar, coef = self._discretise(u_t.dtype, steps)
        state.x = lam_bar * state.x + coef * (v.to(B.dtype) @ B.transpose(0, 1))
        y = self._factor * _re(state.x @ C[0].transpose(0, 1)) + self.skip(u_t, v)
        return y.to(u_t.dtype), state
