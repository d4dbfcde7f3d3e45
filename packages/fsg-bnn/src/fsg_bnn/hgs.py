"""Historical Gradient Storage (HGS): FSG paper (arXiv 2412.11777) abstract and Fig. 1; the sequence
layout of the official code (two-tiger/FSG @ 9559b30, ``meta_utils/helpers.py:meta_fast_slow_gradient_generation``).

Per layer, a FIFO window of the last ``L`` flattened gradients ``g = dloss/dW^`` (detached). The
slow net reads it as one sequence:

* ``layout="time_major"`` (the official code, default): ``H = [g_{t-L+1}; ...; g_t]`` of shape
  ``(1, L * n, 1)``: the scan runs over all ``n`` coordinates of the oldest gradient, then of the next
  one, ... (it is *not* a per-coordinate time series). While fewer than ``L`` gradients exist the
  sequence grows (``n, 2n, ...``); ``L = 1`` keeps only ``g_t`` (the "w/o HGS" ablation).
* ``layout="coordinate"`` [ours]: one length-``m`` time series per coordinate, shape ``(n, m, 1)``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import torch

__all__ = ["HistoricalGradientStorage"]


class HistoricalGradientStorage:
    """FIFO windows of recent gradients, one per layer name (module docstring)."""

    def __init__(self, length: int = 5, layout: Literal["time_major", "coordinate"] = "time_major") -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"HGS length must be an int >= 1, got {length!r}")
        if layout not in ("time_major", "coordinate"):
            raise ValueError(f"unknown HGS layout {layout!r}; use 'time_major' or 'coordinate'")
        self.length = length
        self.layout = layout
        self._buffers: dict[str, deque[torch.Tensor]] = {}

    def push(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """Append ``grad`` (any shape, flattened, detached) to layer ``name``'s window; return the sequence."""
        if not isinstance(grad, torch.Tensor):
            raise TypeError(f"grad must be a tensor, got {type(grad).__name__}")
        flat = grad.detach().reshape(-1)
        buf = self._buffers.get(name)
        if buf is not None and buf and buf[-1].numel() != flat.numel():
            raise ValueError(
                f"HGS layer {name!r}: gradient has {flat.numel()} entries, the stored ones {buf[-1].numel()}"
            )
        if buf is None:
            buf = self._buffers[name] = deque(maxlen=self.length)
        buf.append(flat.clone())
        return self.sequence(name)

    def sequence(self, name: str) -> torch.Tensor:
        """The stored window of ``name``: ``(1, m*n, 1)`` (time-major) or ``(n, m, 1)`` (coordinate)."""
        if name not in self._buffers or not self._buffers[name]:
            raise KeyError(f"HGS has no gradient for layer {name!r}")
        buf = list(self._buffers[name])
        if self.layout == "time_major":
            return torch.cat(buf).view(1, -1, 1)
        return torch.stack(buf, dim=1).unsqueeze(-1)

    def count(self, name: str) -> int:
        """Number of gradients currently stored for ``name`` (``m <= L``)."""
        return len(self._buffers.get(name, ()))

    def current(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """The outputs aligned with the newest gradient (the last ``n`` positions, or the last step)."""
        n = self._buffers[name][-1].numel()
        if self.layout == "time_major":
            return output[:, -n:, :].reshape(-1)
        return output[:, -1, :].reshape(-1)

    def names(self) -> list[str]:
        return list(self._buffers)

    def reset(self) -> None:
        self._buffers.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "layout": self.layout,
            "buffers": {k: [t.clone() for t in v] for k, v in self._buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("length") != self.length or state.get("layout") != self.layout:
            raise ValueError(
                f"HGS state has length={state.get('length')}, layout={state.get('layout')!r}; "
                f"this storage has length={self.length}, layout={self.layout!r}"
            )
        self._buffers = {k: deque(v, maxlen=self.length) for k, v in state["buffers"].items()}

    def __repr__(self) -> str:
        return f"HistoricalGradientStorage(length={self.length}, layout={self.layout!r}, layers={len(self._buffers)})"
