"""S4D: the diagonal structured state space layer, complex (S4D-Lin) or real (S4D-Real) initialisation.

Gu, Gupta, Goel, Re 2022, "On the Parameterization and Initialization of Diagonal State Space Models",
Sec. 3 (the diagonal kernel and its zero-order-hold discretisation) and Sec. 4 (S4D-Lin, S4D-Real);
behaviour and defaults follow state-spaces/s4 @ 2ed46fc ``models/s4/s4d.py:S4D``. Per channel ``h`` and
mode ``n``::

    A_n = -exp(log_A_real) + i A_imag (lin)  or  -exp(A_log) (real),    dt = exp(log_dt)
    ZOH:  A_bar = exp(dt A),   B_bar = (exp(dt A) - 1) / A * B
    K_l = c Re sum_n C_n B_bar_n A_bar_n^l,     y = K * v + D u        (v: the modulated input)

``init="lin"`` keeps ``N/2`` complex modes (conjugates implied, ``c = 2``), ``A_imag = pi n``,
``log_A_real = log 1/2``, ``B = 1``, ``C ~ CN(0, 1)``; ``init="real"`` keeps ``N`` real modes
``A_n = -(n + 1)``, a learnt ``B`` (ones) and a real ``C ~ N(0, 1)`` (``c = 1``); ``c_scale`` multiplies
the initial ``C``. ``output="gelu_glu"`` appends the official layer's output stage
``GLU(Linear(H, 2H)(GELU(y)))``.

Modes: ``"conv"`` (FFT convolution), ``"recurrent"`` (diagonal linear scan), ``"auto"`` (convolution
unless per-step ``timesteps`` make the system time-varying). With relative ``timesteps`` ``tau``
position ``k`` is discretised with ``dt * tau_k``; a row with a constant ``tau`` stays time-invariant
and is convolved with the rescaled kernel. :meth:`S4D.step` decodes one position at a time and equals
the convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from papers_shared.ssm.modules.base import (
    LTISSM,
    complex_dtype,
    default_complex,
    prepare_input,
    real_param,
    tag,
)
from papers_shared.ssm.modules.functional import SCAN_MODES, linear_scan, vandermonde_kernel

__all__ = ["S4D", "S4DState"]

_INITS = ("lin", "real")
_OUTPUTS = ("none", "gelu_glu")


@dataclass
class S4DState:
    """Decoding state: the SSM state ``(B, H, modes)`` and the modulation's cache (if any)."""

    x: torch.Tensor
    cache: Any = None


def _re(x: torch.Tensor) -> torch.Tensor:
    return x.real if x.is_complex() else x


class S4D(LTISSM):
    """Diagonal S4 layer (module docstring).

    Args:
        d_model: channels ``H``.
        d_state: state size ``N`` (``init="lin"``: ``N/2`` complex modes, so ``N`` even).
        dt_min, dt_max: range of the log-uniform ``dt`` initialisation.
        init: ``"lin"`` (S4D-Lin, complex) or ``"real"`` (S4D-Real with a learnt ``B``).
        c_scale: factor on the initial ``C``.
        output: ``"none"`` or ``"gelu_glu"`` (the official layer's GELU + ``Linear(H, 2H)`` + GLU).
        transposed: inputs/outputs ``(B, H, L)`` instead of ``(B, L, H)``.
        bidirectional: a second ``C`` reads the reversed sequence; the two outputs are summed.
        mode: default of :meth:`forward` (``"auto"``, ``"conv"``, ``"recurrent"``).
        scan_mode: algorithm of the recurrent mode (:data:`~papers_shared.ssm.modules.functional.SCAN_MODES`).
        modulation, modulation_bwd, skip_modulated: the input-modulation hook
            (:class:`~papers_shared.ssm.modules.base.ModulatedSSM`).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "lin",
        c_scale: float = 1.0,
        output: str = "none",
        transposed: bool = False,
        bidirectional: bool = False,
        mode: str = "auto",
        scan_mode: str = "chunked",
        modulation: nn.Module | None = None,
        modulation_bwd: nn.Module | None = None,
        skip_modulated: bool = False,
    ) -> None:
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {list(_INITS)}, got {init!r}")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {list(_OUTPUTS)}, got {output!r}")
        if init == "lin" and (d_state < 2 or d_state % 2):
            raise ValueError(f"d_state must be an even int >= 2 for init='lin', got {d_state}")
        if d_model < 1 or d_state < 1:
            raise ValueError(f"d_model and d_state must be >= 1, got {d_model}, {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"scan_mode must be one of {list(SCAN_MODES)}, got {scan_mode!r}")
        H = d_model
        self.d_model, self.d_state, self.init = H, d_state, init
        self.transposed, self.bidirectional, self.mode, self.scan_mode = (
            transposed,
            bidirectional,
            mode,
            scan_mode,
        )
        channels = 2 if bidirectional else 1
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = tag(nn.Parameter(log_dt), "ssm")
        if init == "lin":
            N2 = d_state // 2
            self.log_A_real = tag(nn.Parameter(torch.full((H, N2), math.log(0.5))), "ssm")
            self.A_imag = tag(
                nn.Parameter(math.pi * torch.arange(N2, dtype=torch.get_default_dtype()).repeat(H, 1)), "ssm"
            )
            C = torch.randn(channels, H, N2, dtype=default_complex())
        else:
            n = torch.arange(1, d_state + 1, dtype=torch.get_default_dtype())
            self.A_log = tag(nn.Parameter(torch.log(n).repeat(H, 1)), "ssm")
            self.B = tag(nn.Parameter(torch.ones(H, d_state)), "ssm")
            C = torch.randn(channels, H, d_state)
        self.C = nn.Parameter(real_param(C if c_scale == 1.0 else C * c_scale))
        self.D = nn.Parameter(torch.randn(H))
        self.output_linear = nn.Linear(H, 2 * H) if output == "gelu_glu" else None
        self.set_modulation(modulation, modulation_bwd, skip_modulated)

    @property
    def modes(self) -> int:
        """Stored modes per channel: ``N/2`` complex (lin) or ``N`` real (real)."""
        return self.d_state // 2 if self.init == "lin" else self.d_state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a one-direction C may come without its direction axis (e.g. a real S4D stored as (H, N))
        key = prefix + "C"
        if key in state_dict and state_dict[key].ndim == self.C.ndim - 1 and self.C.shape[0] == 1:
            state_dict[key] = state_dict[key].unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- parameters -> discrete system -------------------------------------------------------------
    def _system(self, dtype: torch.dtype):
        """``(A, dt, C, B)``: ``(H, modes)``, ``(H,)``, ``(c, H, modes)``, ``(H, modes)`` or ``None``."""
        dt = torch.exp(self.log_dt).to(dtype)
        if self.init == "lin":
            cd = complex_dtype(dtype)
            A = torch.complex(-torch.exp(self.log_A_real), self.A_imag).to(cd)
            return A, dt, torch.view_as_complex(self.C.contiguous()).to(cd), None
        return -torch.exp(self.A_log.to(dtype)), dt, self.C.to(dtype), self.B.to(dtype)

    def _input_gain(self, A: torch.Tensor, dA: torch.Tensor, B: torch.Tensor | None) -> torch.Tensor:
        """ZOH ``B_bar = (exp(dt A) - 1) / A * B``."""
        g = (dA - 1.0) / A
        return g if B is None else g * B

    @property
    def _factor(self) -> float:
        return 2.0 if self.init == "lin" else 1.0

    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """Convolution kernel ``(channels, H, L)``, or ``(B, channels, H, L)`` for a per-sequence step
        ``rate`` ``(B,)`` that rescales ``dt``."""
        dtype = self.log_dt.dtype
        A, dt, C, B = self._system(dtype)
        if rate is not None:
            dt = (dt * rate.to(dtype)[:, None])[:, None]  # (B, 1, H)
        dtA = A * dt.unsqueeze(-1)  # (..., H, modes)
        coef = C * (torch.exp(dtA) - 1.0) / A  # C * B_bar
        if B is not None:
            coef = coef * B
        return vandermonde_kernel(coef, dtA, L, conj_pairs=self.init == "lin")

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, mode: str | None = None
    ) -> torch.Tensor:
        """``u``: ``(B, L, H)`` (``(B, H, L)`` if transposed); ``timesteps``: ``(B, L)`` or ``(L,)``."""
        u, ts = prepare_input(u, self.d_model, self.transposed, timesteps)
        y, v = self.lti_forward(u, ts, mode or self.mode)
        y = self._output((y + self.skip(u, v)).to(u.dtype))
        return y.transpose(1, 2) if self.transposed else y

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        if self.output_linear is None:
            return y
        return F.glu(self.output_linear(F.gelu(y)), dim=-1)

    def recurrent_direction(self, v, ts, channel):
        _, _, C, _ = self._system(v.dtype)
        x = self._scan(v, ts)
        return self._factor * _re(torch.einsum("blhn,hn->blh", x, C[channel]))

    def _scan(self, v: torch.Tensor, ts: torch.Tensor | None) -> torch.Tensor:
        A, dt, _, B = self._system(v.dtype)
        if ts is None:
            dA = torch.exp(A * dt[:, None])  # (H, modes)
            return linear_scan(
                dA[None, None], self._input_gain(A, dA, B) * v.unsqueeze(-1), mode=self.scan_mode
            )
        # time-varying: one (B, L, H, modes) transition per position. exp(dt tau A) is taken in polar form
        # (real exp, cos, sin: vectorised, unlike the complex exp) and the division by A is folded into a
        # small (H, modes) factor (ours; equal up to rounding)
        step = (ts.to(v.dtype)[..., None] * dt).unsqueeze(-1)  # (B, L, H, 1)
        if A.is_complex():
            dA = torch.polar(torch.exp(A.real * step), A.imag * step)
        else:
            dA = torch.exp(A * step)
        gain = 1.0 / A if B is None else B / A
        return linear_scan(dA, (dA - 1.0) * (gain * v.unsqueeze(-1)), mode=self.scan_mode)

    def states(
        self, u: torch.Tensor, timesteps: torch.Tensor | None = None, modulated: bool = True
    ) -> torch.Tensor:
        """Hidden states ``x_k`` ``(B, L, H, modes)`` of the forward direction (complex for ``"lin"``),
        after the input modulation unless ``modulated=False``."""
        u, ts = prepare_input(u, self.d_model, False, timesteps)
        v = self.modulation(u) if (modulated and self.modulation is not None) else u
        return self._scan(v, ts)

    # -- decoding -----------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S4DState:
        device = device if device is not None else self.log_dt.device
        dtype = dtype or self.log_dt.dtype
        sdtype = complex_dtype(dtype) if self.init == "lin" else dtype
        x = torch.zeros(batch_size, self.d_model, self.modes, device=device, dtype=sdtype)
        return S4DState(x, self.allocate_modulation_cache(batch_size, device, dtype))

    def step(self, u_t: torch.Tensor, state: S4DState | None = None, timestep: torch.Tensor | None = None):
        """One recurrent step: ``u_t`` ``(B, H)`` -> ``(y_t, state)``; ``timestep``: ``(B,)`` relative step."""
        self._check_step(u_t)
        if state is None:
            state = self.allocate_state(u_t.shape[0], u_t.device, u_t.dtype)
        v, state.cache = self.modulate_step(u_t, state.cache)
        A, dt, C, B = self._system(u_t.dtype)
        dt = dt if timestep is None else dt * timestep.to(u_t.dtype)[:, None]
        dA = torch.exp(A * dt[..., None])
        state.x = dA * state.x + self._input_gain(A, dA, B) * v.unsqueeze(-1)
        y = self._factor * _re((state.x * C[0]).sum(-1)) + self.skip(u_t, v)
        return self._output(y.to(u_t.dtype)), state
