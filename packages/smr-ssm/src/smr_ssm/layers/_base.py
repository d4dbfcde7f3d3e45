"""Helpers shared by the SSM layers: optimiser-group tags, timestep handling, input layout."""

from __future__ import annotations

import torch
from torch import nn

from smr_ssm._checks import check_sequence, check_timesteps
from smr_ssm.ops.fftconv import causal_fft_conv

__all__ = [
    "OPTIM_GROUPS",
    "complex_dtype",
    "default_complex",
    "real_param",
    "constant_rate",
    "prepare_input",
    "reverse_timesteps",
    "tag",
]

#: Optimiser groups a parameter can be tagged with (read by :func:`smr_ssm.trainer.param_groups`):
#: ``"ssm"``: SSM core (``log_dt``, ``A``-parameters; lr ``min(lr, 1e-3)``, no weight decay, the S4
#: convention of spec §3.7); ``"smr"``: SMR memories (main lr, no weight decay, [ours]);
#: ``"no_decay"``: main lr without weight decay (Mamba's ``A_log``/``D``, norms, biases).
OPTIM_GROUPS = ("ssm", "smr", "no_decay")


def tag(param: nn.Parameter, group: str) -> nn.Parameter:
    if group not in OPTIM_GROUPS:
        raise ValueError(f"unknown optimiser group {group!r}; valid: {OPTIM_GROUPS}")
    param._smr_group = group
    return param


def default_complex() -> torch.dtype:
    """Complex dtype matching ``torch.get_default_dtype()`` (parameters follow the default dtype, so
    ``from_pretrained(dtype=...)`` and ``.double()`` give a consistent model)."""
    return complex_dtype(torch.get_default_dtype())


def real_param(x: torch.Tensor) -> torch.Tensor:
    """A real or complex initial value as a real tensor in the default dtype (complex -> ``(..., 2)``)."""
    if x.is_complex():
        return torch.view_as_real(x.to(default_complex())).contiguous()
    return x.to(torch.get_default_dtype())


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def prepare_input(u: torch.Tensor, d_model: int, transposed: bool, timesteps):
    """Validate, bring ``u`` to ``(B, L, H)`` and ``timesteps`` to ``(B, L)`` (or ``None``)."""
    check_sequence(u, d_model, transposed=transposed)
    if transposed:
        u = u.transpose(1, 2)
    ts = check_timesteps(timesteps, u.shape[0], u.shape[1])
    return u, (None if ts is None else ts.to(u.dtype))


def reverse_timesteps(ts: torch.Tensor | None) -> torch.Tensor | None:
    """Steps seen by a layer that reads the sequence backwards (spec §3.4, bidirectional layers).

    Reading ``u_{L-1}, ..., u_0`` the step into reversed position ``i >= 1`` is ``tau_{L-i}`` (the gap
    between ``t_{L-i}`` and ``t_{L-1-i}``); the first reversed position reuses ``tau_{L-1}``.
    """
    if ts is None:
        return None
    return torch.cat([ts[:, -1:], ts.flip(1)[:, :-1]], dim=1)


def constant_rate(ts: torch.Tensor | None) -> torch.Tensor | None:
    """``(B,)`` per-sequence rate when every step of a row is equal (a uniformly rescaled grid, still
    LTI and convolvable), else ``None``."""
    if ts is None:
        return None
    if bool((ts == ts[:, :1]).all()):
        return ts[:, 0]
    return None


def direction_inputs(host, u: torch.Tensor, channels_first: bool):
    """Inputs of a host's forward and (if bidirectional) backward direction after their SMR modules.

    ``u`` is ``(B, L, H)``. With ``channels_first`` the results are ``(B, H, L)`` (the layout of the FFT
    convolution; SMR then runs as one depthwise ``conv1d``), else ``(B, L, H)``. The backward input is
    the reversed sequence, replayed by the host's own ``smr_bwd`` (spec §3.4, bidirectional layers).
    """
    smr, smr_bwd = getattr(host, "smr", None), getattr(host, "smr_bwd", None)
    if channels_first:
        x = u.transpose(1, 2)
        uf = smr.forward_channels_first(x) if smr is not None else x
        if not host.bidirectional:
            return uf, None
        r = x.flip(-1)
        return uf, (smr_bwd.forward_channels_first(r) if smr_bwd is not None else r)
    uf = smr(u) if smr is not None else u
    if not host.bidirectional:
        return uf, None
    r = u.flip(1)
    return uf, (smr_bwd(r) if smr_bwd is not None else r)


def skip_term(host, u: torch.Tensor, uf: torch.Tensor) -> torch.Tensor:
    """``D * u`` on the raw input (``skip_uses="raw"``, spec §3.4 step 4) or on ``u~`` (``"smr"``);
    ``uf`` is ``u~`` in ``u``'s layout."""
    smr = getattr(host, "smr", None)
    use_smr = smr is not None and smr.skip_uses == "smr"
    return host.D.to(u.dtype) * (uf if use_smr else u)


def resolve_mode(
    mode: str, ts: torch.Tensor | None, conv_name: str = "conv", modes=("auto", "conv", "recurrent")
):
    """``(use_conv, rate)``: convolution when asked or, for ``"auto"``, when the system is time-invariant
    (no timesteps, or a constant step per row, returned as ``rate``)."""
    if mode not in modes:
        raise ValueError(f"mode must be one of {list(modes)}, got {mode!r}")
    rate = constant_rate(ts)
    if mode == conv_name and ts is not None and rate is None:
        raise ValueError(
            f"mode={conv_name!r} needs a time-invariant system: timesteps must be constant along each row"
        )
    return mode == conv_name or (mode == "auto" and (ts is None or rate is not None)), rate


def lti_forward(host, u: torch.Tensor, ts: torch.Tensor | None, mode: str, recurrent_direction):
    """Shared forward of the LTI hosts (S4D, S4, Mega-EMA) without their skip term.

    Convolution mode: SMR and the FFT convolution in the channels-first layout, ``K * u~`` (spec §3.5,
    §3.6); the backward direction of a bidirectional host is convolved with its own kernel on the
    reversed (and separately replayed) sequence, then reversed back. Recurrent mode:
    ``recurrent_direction(v, ts, channel)`` on ``(B, L, H)`` inputs. Returns ``(y, u~)`` in ``(B, L, H)``.
    """
    use_conv, rate = resolve_mode(mode, ts)
    if use_conv:
        uf, ub = direction_inputs(host, u, channels_first=True)
        k = host.kernel(u.shape[1], rate)  # (c, H, L) or (B, c, H, L)
        if ub is None:
            y = causal_fft_conv(uf, k[..., 0, :, :])
        else:
            yy = causal_fft_conv(torch.stack([uf, ub], dim=1), k)
            y = yy[:, 0] + yy[:, 1].flip(-1)
        return y.transpose(1, 2), uf.transpose(1, 2)
    uf, ub = direction_inputs(host, u, channels_first=False)
    y = recurrent_direction(uf, ts, 0)
    if ub is not None:
        y = y + recurrent_direction(ub, reverse_timesteps(ts), 1).flip(1)
    return y, uf
