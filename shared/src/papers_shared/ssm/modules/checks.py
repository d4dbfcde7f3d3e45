"""Input validation of the SSM layers: clear errors on bad shapes, dtypes and NaN/inf values.

The finiteness checks cost one reduction per call; :func:`set_validation` (or the :func:`validation`
context manager) turns the value checks off for trusted data or GPU runs where the host synchronisation
matters. Shape and dtype checks always run. The switch is process-wide.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "check_finite",
    "check_sequence",
    "check_timesteps",
    "set_validation",
    "validation",
    "validation_enabled",
]

_VALUE_CHECKS = True


def set_validation(enabled: bool) -> None:
    """Enable or disable the NaN/inf value checks (shape and dtype checks always run)."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def validation_enabled() -> bool:
    return _VALUE_CHECKS


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Temporarily enable or disable the value checks (e.g. ``validation(False)`` around generated data)."""
    old = _VALUE_CHECKS
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(old)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf.

    A finite sum proves every element finite (NaN and inf propagate through a sum), so only a non-finite
    sum (or an overflow) triggers the exact elementwise count.
    """
    if not _VALUE_CHECKS or x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")


def check_sequence(u: torch.Tensor, channels: int, name: str = "u", transposed: bool = False) -> None:
    """``u`` must be a real floating tensor ``(batch, length, channels)`` (``(batch, channels, length)``
    when ``transposed``) with finite values."""
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(u).__name__}")
    layout = "(batch, channels, length)" if transposed else "(batch, length, channels)"
    ch_dim = 1 if transposed else 2
    if u.ndim != 3 or u.shape[ch_dim] != channels:
        raise ValueError(f"{name} must be {layout} with channels={channels}; got shape {tuple(u.shape)}")
    if not u.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor; got dtype {u.dtype}")
    if u.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(u.shape)}")
    check_finite(u, name)


def check_timesteps(timesteps: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """Relative sampling steps ``tau_k > 0`` of shape ``(batch, length)`` or ``(length,)``.

    ``tau_k = (t_k - t_{k-1}) / base_step``: the step a layer was trained with is ``tau = 1``, and a layer
    discretises position ``k`` with ``Delta_k = Delta * tau_k``. Returns a ``(batch, length)`` view.
    """
    if timesteps is None:
        return None
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be a torch.Tensor, got {type(timesteps).__name__}")
    if not timesteps.is_floating_point():
        raise TypeError(f"timesteps must be floating point; got dtype {timesteps.dtype}")
    if timesteps.ndim == 1:
        timesteps = timesteps.unsqueeze(0).expand(batch, -1)
    if timesteps.ndim != 2 or timesteps.shape[1] != length or timesteps.shape[0] not in (1, batch):
        raise ValueError(
            f"timesteps must be (batch={batch}, length={length}) or (length,); got {tuple(timesteps.shape)}"
        )
    if _VALUE_CHECKS:
        check_finite(timesteps, "timesteps")
        if not (timesteps > 0).all():
            raise ValueError("timesteps must be strictly positive (relative sampling steps)")
    return timesteps.expand(batch, length)
