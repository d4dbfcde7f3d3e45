"""T-Switch decomposition of a task vector and its reconstruction (paper: activation
switch, polarity switch, scaling knob; official ``merge_vit/merge_vit.py:binarize_matrix`` at 68bfda8).

``tau~ = drop(tau, r)`` (activation switch ``M = 1[tau~ != 0]``), ``S = sign(tau~)`` (polarity switch),
``lambda = ||tau~||_2 / ||S||_2`` (scaling knob: the RMS of the kept entries), and
``tau^ = lambda * S`` (reconstruction). Order fixed: drop first, then binarize; ``lambda`` comes from the
dropped tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from t_switch.sparsify import drop_by_sign, drop_global
from t_switch.task_vector import TaskVector

__all__ = ["BinarySwitch", "binarize", "compress_task_vector"]

SCALES = ("tensor", "global")
SCOPES = ("tensor", "global")


@dataclass
class BinarySwitch:
    """Switches of one task: per tensor a ternary ``S`` (int8), a scale ``lambda``; 0-dim passthrough.

    Attributes:
        signs: ``name -> int8 Tensor`` in {-1, 0, +1} (``M = signs != 0``; the sign where active).
        scales: ``name -> float`` (``lambda^l``; one shared value when ``scale="global"``).
        passthrough: ``name -> Tensor`` 0-dim task-vector entries kept in full precision (official code).
        shapes/dtypes of the original tensors are those of ``signs``/``passthrough``.
    """

    signs: dict[str, Tensor]
    scales: dict[str, float]
    passthrough: dict[str, Tensor] = field(default_factory=dict)
    drop_ratio: float = 0.0

    def __post_init__(self) -> None:
        if set(self.signs) != set(self.scales):
            raise ValueError("signs and scales must hold the same tensor names")
        overlap = set(self.signs) & set(self.passthrough)
        if overlap:
            raise ValueError(f"tensors both switched and passed through: {sorted(overlap)[:5]}")
        for k, s in self.signs.items():
            if s.dtype != torch.int8:
                raise TypeError(f"signs[{k!r}] must be int8, got {s.dtype}")
            if not math.isfinite(self.scales[k]) or self.scales[k] < 0:
                raise ValueError(f"scale of {k!r} must be finite and >= 0, got {self.scales[k]}")

    # construction ----------------------------------------------------------------------------------
    @classmethod
    def from_task_vector(
        cls,
        tv: Mapping[str, Tensor],
        drop_ratio: float = 0.6,
        scale: str = "tensor",
        scope: str = "tensor",
        legacy_float_floor: bool = False,
        keep_zero_tensors: bool = False,
    ) -> BinarySwitch:
        """Drop (activation switch), then binarize (polarity switch and scaling knob).

        Args:
            drop_ratio: ``r`` (``> 1`` read as a percentage).
            scale: ``"tensor"`` (default, = code: one lambda per tensor) or ``"global"`` (ours).
            scope: ``"tensor"`` (default, = code: per-tensor thresholds) or ``"global"`` (ours).
            legacy_float_floor: reproduce the code's float ``int((1 - r) n)`` (see :mod:`.sparsify`).
            keep_zero_tensors: store all-zero tensors (lambda = 0) instead of skipping them as the
                ViT code does (``binarize_matrix``); they contribute nothing either way.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if scope == "global":
            dropped = drop_global(tv, drop_ratio)
        else:
            dropped = drop_by_sign(tv, drop_ratio, legacy_float_floor)
        sw = binarize(dropped, scale=scale, keep_zero_tensors=keep_zero_tensors)
        sw.drop_ratio = float(drop_ratio)
        return sw

    # reconstruction ---------------------------------------------------------------------------------
    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
        """``tau^`` of one tensor: ``lambda * S`` (or the 0-dim passthrough)."""
        if name in self.passthrough:
            return self.passthrough[name].to(dtype)
        return self.signs[name].to(dtype) * self.scales[name]

    def to_task_vector(self, dtype: torch.dtype = torch.float32) -> TaskVector:
        """``tau^ = lambda * S`` for every tensor."""
        return TaskVector({k: self.tensor(k, dtype) for k in self.names})

    @property
    def names(self) -> list[str]:
        return list(self.signs) + list(self.passthrough)

    def mask(self, name: str) -> Tensor:
        """Activation switch ``M`` of one tensor (bool)."""
        return self.signs[name] != 0

    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.signs.values())

    @property
    def nnz(self) -> int:
        return sum(int(torch.count_nonzero(s)) for s in self.signs.values())

    @property
    def density(self) -> float:
        return self.nnz / max(self.numel, 1)


def binarize(
    dropped: Mapping[str, Tensor], scale: str = "tensor", keep_zero_tensors: bool = False
) -> BinarySwitch:
    """Polarity switch and scaling knob of an already sparsified task vector (official ``binarize_matrix``).

    ``lambda^l = ||tau~^l||_2 / ||S^l||_2``; with ``scale="global"`` one lambda over all tensors.
    0-dim tensors pass through unchanged; all-zero tensors are skipped unless ``keep_zero_tensors``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    signs: dict[str, Tensor] = {}
    scales: dict[str, float] = {}
    passthrough: dict[str, Tensor] = {}
    sq_sum, count = 0.0, 0
    for name, t in dropped.items():
        if not t.is_floating_point():
            raise TypeError(f"{name}: task-vector tensors must be floating point, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {name!r} contains NaN or inf values")
        if t.dim() == 0:
            passthrough[name] = t.detach().clone()
            continue
        s = torch.sign(t).to(torch.int8)
        nnz = int(torch.count_nonzero(s))
        if nnz == 0 and not keep_zero_tensors:
            continue
        ss = float((t.double() ** 2).sum())
        sq_sum += ss
        count += nnz
        signs[name] = s
        scales[name] = math.sqrt(ss / nnz) if nnz else 0.0
    if scale == "global":
        lam = math.sqrt(sq_sum / count) if count else 0.0
        scales = dict.fromkeys(scales, lam)
    return BinarySwitch(signs, scales, passthrough)


def compress_task_vector(tv: Mapping[str, Tensor], drop_ratio: float = 0.6, **kwargs) -> BinarySwitch:
    """Alias of :meth:`BinarySwitch.from_task_vector`."""
    return BinarySwitch.from_task_vector(tv, drop_ratio, **kwargs)
