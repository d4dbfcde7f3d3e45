"""Helpers shared by the SSM layers: optimiser-group tags, timestep handling, input layout."""

from __future__ import annotations

import torch
from torch import nn

from smr_ssm._checks import check_sequence, check_timesteps

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
