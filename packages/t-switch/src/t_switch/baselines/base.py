"""What every merging method shares: the :class:`MergeResult` and the input checks.

Every method is ``fn(pretrained, task_vectors, **hyper) -> MergeResult`` with ``pretrained`` a state
dict (or module) and ``task_vectors`` an ordered ``task -> TaskVector`` mapping. A static method returns one
shared delta; a dynamic method (task identity known at inference) a delta per task.
``MergeResult.params(task)`` gives ``theta_0 + delta`` on the merged tensors, ready for
``torch.func.functional_call`` (see :func:`t_switch.evaluate.run_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from t_switch.task_vector import StateLike, TaskVector, state_dict_of

__all__ = ["MergeResult", "fp32_bytes", "prepare", "stack"]


@dataclass
class MergeResult:
    """Outcome of a merge: a shared delta (static) or a per-task delta function (dynamic)."""

    method: str
    tasks: list[str]
    pretrained: dict[str, Tensor]
    shared: dict[str, Tensor] | None = None
    per_task: Callable[[str], dict[str, Tensor]] | None = None
    storage_bytes: int = 0  # what must be stored besides theta_0
    info: dict = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        return self.per_task is not None

    def delta(self, task: str | None = None) -> dict[str, Tensor]:
        if self.per_task is not None:
            if task not in self.tasks:
                raise KeyError(f"{self.method} is dynamic: pass one of {self.tasks}, got {task!r}")
            return self.per_task(task)
        return self.shared or {}

    def params(self, task: str | None = None) -> dict[str, Tensor]:
        """``theta_0 + delta`` on the merged tensors (in the pre-trained dtype)."""
        out = {}
        for n, d in self.delta(task).items():
            base = self.pretrained[n]
            out[n] = (base.float() + d.float()).to(base.dtype)
        return out


def prepare(
    pretrained: StateLike, task_vectors: Mapping[str, TaskVector]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    if not task_vectors:
        raise ValueError("at least one task vector is required")
    pre = state_dict_of(pretrained, include_buffers=True)
    tasks = list(task_vectors)
    names = list(next(iter(task_vectors.values())).keys())
    for t, tv in task_vectors.items():
        if list(tv.keys()) != names and set(tv.keys()) != set(names):
            raise KeyError(f"task vector {t!r} holds different tensors than {tasks[0]!r}")
        for n in names:
            if n not in pre:
                raise KeyError(f"task-vector tensor {n!r} is not in the pre-trained weights")
            if tv[n].shape != pre[n].shape:
                raise ValueError(f"{t}/{n}: shape {tuple(tv[n].shape)} vs pre-trained {tuple(pre[n].shape)}")
    return pre, tasks, names


def fp32_bytes(names: list[str], tv: TaskVector) -> int:
    return 4 * sum(tv[n].numel() for n in names)


def stack(task_vectors: Mapping[str, TaskVector], name: str) -> Tensor:
    return torch.stack([tv[name].float() for tv in task_vectors.values()])
