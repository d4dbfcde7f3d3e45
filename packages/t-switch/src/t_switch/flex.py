"""Auto-FlexSwitch (arXiv 2604.28109): documented extension point, *not implemented*.

Auto-FlexSwitch keeps T-Switch's decomposition (mask, sign, scalar) and Auto-Switch's retrieval and makes
compression learnable: Learnable Gating Sparsification (per-unit learned sparsity), Bit-width Adaptive
Selection (per-unit bit width instead of one bit), a Sparsity-Aware Storage Strategy (the cheapest
encoding per unit) and k-NN retrieval with a learnable low-rank metric. Only the abstract of that paper
was available when this package was written, so none of it is implemented here, and nothing in this
module pretends otherwise.

Where it would plug in (the interfaces below are what the rest of the package already uses):

* a compressor replaces :meth:`t_switch.switch.BinarySwitch.from_task_vector`. Code that only needs the
  reconstruction (:func:`t_switch.baselines.t_switch`, :func:`t_switch.analysis.drop_sweep`) works with
  anything satisfying :class:`CompressedTask`; :class:`t_switch.bank.TaskSwitchBank` reads the
  ``signs``/``scales``/``passthrough`` fields of :class:`~t_switch.switch.BinarySwitch` directly, so a
  multi-bit compressor would need its own bank (or a per-tensor ``tensor(name)`` path there);
* a storage strategy replaces :func:`t_switch.packing.pack_ternary` per tensor (SASS would choose
  between it and, e.g., a dense low-bit code);
* a learned metric replaces the Euclidean distance of :class:`t_switch.router.KNNRouter`
  (``metric`` is the hook; a low-rank projection ``P`` amounts to routing on ``phi(x) @ P``, which can
  already be done by passing such a ``feature_fn`` to :class:`t_switch.auto_switch.AutoSwitch`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from t_switch.task_vector import TaskVector

__all__ = ["CompressedTask", "TaskCompressor"]


@runtime_checkable
class CompressedTask(Protocol):
    """A compressed task vector the bank can reconstruct (``BinarySwitch`` satisfies it)."""

    @property
    def names(self) -> list[str]: ...

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> Tensor: ...

    def to_task_vector(self, dtype: torch.dtype = torch.float32) -> TaskVector: ...


@runtime_checkable
class TaskCompressor(Protocol):
    """Builds a :class:`CompressedTask` from a task vector (``BinarySwitch.from_task_vector`` is one)."""

    def __call__(self, tv: TaskVector, **hyper) -> CompressedTask: ...
