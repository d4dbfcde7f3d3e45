"""What the SSM layers share: parameter tags, dtype helpers, input layout, and the input-modulation hook.

**Input modulation.** Every layer here can take a ``modulation`` module that rewrites the sequence
entering its *state update* (the ``B u`` term) and nothing else::

    x_k = A_bar x_{k-1} + B_bar v_k,   v = modulation(u),   y_k = C x_k + D u_k

For small steps ``B_bar(Delta_k) ~ Delta_k B``, so a per-position factor ``v_k = s_k u_k`` acts like a
per-position input step while ``A_bar`` - and therefore a time-invariant layer's convolution kernel -
stays fixed: a learnt, causal ``s_k`` is a way to adapt the discretisation step without giving up the
convolution mode (ours: the generic form of input-side step adaptation, e.g. smr-ssm's State Memory
Replay). The skip term keeps the raw input unless ``skip_modulated=True``. A bidirectional layer takes
a second module for its backward direction, which then reads the reversed sequence. Any
``(B, L, H) -> (B, L, H)`` module works (see :class:`InputModulation`); decoding step by step
additionally needs its ``allocate_cache``/``step``. With ``modulation=None`` the layers are the plain
SSMs.

**Parameter tags.** :func:`tag` marks parameters with ``param._optim_group``: ``"ssm"`` for the SSM
core (``log_dt``, the ``A`` parameters, S5's ``B``) that the S4 convention trains with a smaller
learning rate and no weight decay (state-spaces/s4 @ 2ed46fc, ``models/s4/s4d.py:S4DKernel.register``),
``"no_decay"`` for parameters trained without weight decay (Mamba's ``A_log`` and ``D``, as
state-spaces/mamba @ 52f57d6 ``mamba_ssm/modules/mamba_simple.py:Mamba.__init__`` marks them). An
optimiser builder reads the tag; untagged parameters are ordinary.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from papers_shared.ssm.modules.checks import check_sequence, check_timesteps
from papers_shared.ssm.modules.functional import causal_fft_conv

__all__ = [
    "OPTIM_GROUPS",
    "InputModulation",
    "LTISSM",
    "ModulatedSSM",
    "complex_dtype",
    "constant_rate",
    "default_complex",
    "prepare_input",
    "real_param",
    "reverse_timesteps",
    "tag",
]

#: Conventional values of ``param._optim_group`` (see the module docstring); packages may add their own.
OPTIM_GROUPS = ("ssm", "no_decay")


def tag(param: nn.Parameter, group: str) -> nn.Parameter:
    """Set ``param._optim_group = group`` and return ``param``."""
    if not isinstance(group, str) or not group:
        raise ValueError(f"group must be a non-empty string, got {group!r}")
    param._optim_group = group
    return param


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def default_complex() -> torch.dtype:
    """The complex dtype matching ``torch.get_default_dtype()`` (parameters follow the default dtype,
    so ``.double()`` and a model built under ``set_default_dtype(float64)`` are consistent)."""
    return complex_dtype(torch.get_default_dtype())


def real_param(x: torch.Tensor) -> torch.Tensor:
    """A real or complex initial value as a real tensor in the default dtype (complex -> ``(..., 2)``)."""
    if x.is_complex():
        return torch.view_as_real(x.to(default_complex())).contiguous()
    return x.to(torch.get_default_dtype())


def prepare_input(u: torch.Tensor, d_model: int, transposed: bool, timesteps):
    """Validate, bring ``u`` to ``(B, L, H)`` and ``timesteps`` to ``(B, L)`` in ``u``'s dtype (or ``None``)."""
    check_sequence(u, d_model, transposed=transposed)
    if transposed:
        u = u.transpose(1, 2)
    ts = check_timesteps(timesteps, u.shape[0], u.shape[1])
    return u, (None if ts is None else ts.to(u.dtype))


def reverse_timesteps(ts: torch.Tensor | None) -> torch.Tensor | None:
    """The steps seen by a direction that reads the sequence backwards.

    Reading ``u_{L-1}, ..., u_0``, the step into reversed position ``i >= 1`` is ``tau_{L-i}`` (the gap
    between ``t_{L-i}`` and ``t_{L-1-i}``); the first reversed position reuses ``tau_{L-1}`` (ours).
    """
    if ts is None:
        return None
    return torch.cat([ts[:, -1:], ts.flip(1)[:, :-1]], dim=1)


def constant_rate(ts: torch.Tensor | None) -> torch.Tensor | None:
    """``(B,)`` per-sequence rate when every step of a row is equal (a uniformly rescaled grid: still
    time-invariant and convolvable), else ``None``."""
    if ts is None:
        return None
    if bool((ts == ts[:, :1]).all()):
        return ts[:, 0]
    return None


@runtime_checkable
class InputModulation(Protocol):
    """What a layer's ``modulation`` module provides (only ``__call__`` is required).

    * ``__call__(u)``: ``(B, L, H) -> (B, L, H)``, the sequence fed to the state update; causal if the
      layer is used causally.
    * optional ``forward_channels_first(u)``: the same on ``(B, H, L)`` (used by convolution mode to save
      two transposes).
    * for step-by-step decoding: ``allocate_cache(batch_size, device, dtype)`` and
      ``step(u_t, cache) -> (v_t, cache)`` on ``(B, H)``, equal to ``__call__`` position by position.
    """

    def __call__(self, u: torch.Tensor) -> torch.Tensor: ...


class ModulatedSSM(nn.Module):
    """Base of the SSM layers with the input-modulation hook (module docstring).

    Subclasses call :meth:`set_modulation` after creating their own parameters (so a modulation module's
    random initialisation does not shift theirs) and use :meth:`direction_inputs`, :meth:`skip` and
    :meth:`modulate_step`.
    """

    bidirectional: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.modulation: nn.Module | None = None
        self.modulation_bwd: nn.Module | None = None
        self.skip_modulated = False

    def set_modulation(
        self,
        modulation: nn.Module | None,
        modulation_bwd: nn.Module | None = None,
        skip_modulated: bool = False,
    ) -> None:
        """Install (or remove, with ``None``) the input modulation of the forward and backward directions.

        A bidirectional layer without ``modulation_bwd`` leaves its backward direction unmodulated.
        ``skip_modulated`` makes the skip term ``D * v`` use the modulated input instead of ``D * u``.
        """
        for name, mod in (("modulation", modulation), ("modulation_bwd", modulation_bwd)):
            if mod is not None and not callable(mod):
                raise TypeError(f"{name} must be a callable module, got {type(mod).__name__}")
        if modulation_bwd is not None and not self.bidirectional:
            raise ValueError("modulation_bwd needs a bidirectional layer")
        self.modulation = modulation
        self.modulation_bwd = modulation_bwd
        self.skip_modulated = bool(skip_modulated) and modulation is not None

    @staticmethod
    def _modulate(mod, x: torch.Tensor, channels_first: bool) -> torch.Tensor:
        if mod is None:
            return x
        if not channels_first:
            return mod(x)
        if hasattr(mod, "forward_channels_first"):
            return mod.forward_channels_first(x)
        return mod(x.transpose(1, 2)).transpose(1, 2)

    def direction_inputs(self, u: torch.Tensor, channels_first: bool = False):
        """``(v_fwd, v_bwd)``: the state-update inputs of both directions (``v_bwd`` is ``None`` for a
        causal layer; for a bidirectional one it is the reversed, separately modulated sequence).

        ``u`` is ``(B, L, H)``; with ``channels_first`` both results are ``(B, H, L)``.
        """
        x = u.transpose(1, 2) if channels_first else u
        time = -1 if channels_first else 1
        vf = self._modulate(self.modulation, x, channels_first)
        if not self.bidirectional:
            return vf, None
        return vf, self._modulate(self.modulation_bwd, x.flip(time), channels_first)

    def skip(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``D * u`` (or ``D * v`` with ``skip_modulated``), ``u`` and ``v`` in the same layout."""
        return self.D.to(u.dtype) * (v if self.skip_modulated else u)

    def allocate_modulation_cache(self, batch_size: int, device, dtype) -> Any:
        mod = self.modulation
        if mod is None or not hasattr(mod, "allocate_cache"):
            return None
        return mod.allocate_cache(batch_size, device, dtype)

    def modulate_step(self, u_t: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One decoding step of the forward modulation: ``(v_t, cache)``."""
        mod = self.modulation
        if mod is None:
            return u_t, cache
        if not hasattr(mod, "step"):
            raise RuntimeError(
                f"{type(mod).__name__} has no step(u_t, cache): this layer cannot decode step by step"
            )
        return mod.step(u_t, cache)

    def _check_step(self, u_t: torch.Tensor, name: str = "u_t") -> None:
        if self.bidirectional:
            raise RuntimeError(
                f"a bidirectional {type(self).__name__} reads future inputs: it has no step-by-step "
                "(decoding) mode"
            )
        if u_t.ndim != 2 or u_t.shape[1] != self.d_model:
            raise ValueError(f"{name} must be (batch, {self.d_model}); got {tuple(u_t.shape)}")


class LTISSM(ModulatedSSM, metaclass=abc.ABCMeta):
    """A time-invariant SSM layer defined by its convolution kernel and its recurrence.

    Subclasses define :meth:`kernel` and :meth:`recurrent_direction`; :meth:`lti_forward` then gives the
    convolution mode (FFT, ``O(L log L)``), the recurrent mode, per-step ``timesteps`` (time-varying:
    recurrent; a constant step per row stays convolvable with a rescaled kernel), bidirectionality (a
    second kernel channel on the reversed sequence, outputs summed) and the input modulation.
    """

    MODES = ("auto", "conv", "recurrent")

    @abc.abstractmethod
    def kernel(self, L: int, rate: torch.Tensor | None = None) -> torch.Tensor:
        """``(channels, H, L)``, or ``(B, channels, H, L)`` when a per-sequence ``rate`` ``(B,)``
        rescales the step; ``channels`` is 2 for a bidirectional layer."""

    @abc.abstractmethod
    def recurrent_direction(self, v: torch.Tensor, ts: torch.Tensor | None, channel: int) -> torch.Tensor:
        """The recurrence of one direction on its state-update input ``v`` ``(B, L, H)`` (no skip term),
        with relative steps ``ts`` ``(B, L)`` or ``None``; ``channel`` 0 forward, 1 backward."""

    def resolve_mode(self, mode: str, ts: torch.Tensor | None) -> tuple[bool, torch.Tensor | None]:
        """``(use_conv, rate)``: convolution when asked or, for ``"auto"``, when the system is
        time-invariant (no timesteps, or a constant step per row, returned as ``rate``)."""
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        rate = constant_rate(ts)
        if mode == "conv" and ts is not None and rate is None:
            raise ValueError(
                "mode='conv' needs a time-invariant system: timesteps must be constant along each row"
            )
        return mode == "conv" or (mode == "auto" and (ts is None or rate is not None)), rate

    def lti_forward(self, u: torch.Tensor, ts: torch.Tensor | None, mode: str):
        """``(y, v)`` without the skip term, both ``(B, L, H)``; ``v`` is the forward state-update input."""
        use_conv, rate = self.resolve_mode(mode, ts)
        if use_conv:
            vf, vb = self.direction_inputs(u, channels_first=True)
            k = self.kernel(u.shape[1], rate)  # (c, H, L) or (B, c, H, L)
            if vb is None:
                y = causal_fft_conv(vf, k[..., 0, :, :])
            else:
                yy = causal_fft_conv(torch.stack([vf, vb], dim=1), k)
                y = yy[:, 0] + yy[:, 1].flip(-1)
            return y.transpose(1, 2), vf.transpose(1, 2)
        vf, vb = self.direction_inputs(u, channels_first=False)
        y = self.recurrent_direction(vf, ts, 0)
        if vb is not None:
            y = y + self.recurrent_direction(vb, reverse_timesteps(ts), 1).flip(1)
        return y, vf
