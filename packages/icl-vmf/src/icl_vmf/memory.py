"""Class and task value memories with working copies and consolidation (official
``backbone/cvt_online.py:Brain_Net_Vit`` tables ``Brain_embedding``, ``memory_2btrain`` and their task
counterparts; consolidation in ``utils/training.py:train``; commit 8c8ad10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VMFValueMemory"]


class VMFValueMemory(nn.Module):
    """Four tables, all initialised ``N(0, init_std^2)``:

    ======================  ==========  =======================================================
    ``class_memory``  M_c   N x d_c     consolidated class memory (buffer: copied at task end)
    ``work_class``    M'_c  N x d_c     working class memory (parameter: memory optimizer)
    ``task_memory``   M_t   T x d_t     consolidated task memory (buffer)
    ``work_task``     M'_t  T x d_t     working task memory (parameter)
    ======================  ==========  =======================================================

    Class ``y`` belongs to task ``tau(y) = y // classes_per_task``. While training task ``t`` the key of
    class ``y`` is ``normalize(concat[mt, mc])`` with ``mc = M'_c[y]`` if ``y >= t*C`` else ``M_c[y]`` and
    ``mt = M'_t[tau(y)]`` if ``tau(y) >= t`` else ``M_t[tau(y)]``: the vMF mean direction of class ``y``.
    Consolidated tables are buffers, so they never receive gradients and old rows stay bit-identical.
    """

    def __init__(
        self,
        num_classes: int,
        num_tasks: int,
        classes_per_task: int,
        d_class: int,
        d_task: int,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes != num_tasks * classes_per_task:
            raise ValueError(
                f"num_classes ({num_classes}) must equal num_tasks * classes_per_task "
                f"({num_tasks} * {classes_per_task}): the memory assumes equal, contiguous tasks"
            )
        if min(d_class, d_task) < 1 or init_std <= 0:
            raise ValueError("d_class, d_task must be >= 1 and init_std > 0")
        self.num_classes, self.num_tasks, self.classes_per_task = num_classes, num_tasks, classes_per_task
        self.d_class, self.d_task = d_class, d_task
        self.register_buffer("class_memory", torch.randn(num_classes, d_class) * init_std)
        self.register_buffer("task_memory", torch.randn(num_tasks, d_task) * init_std)
        self.work_class = nn.Parameter(torch.randn(num_classes, d_class) * init_std)
        self.work_task = nn.Parameter(torch.randn(num_tasks, d_task) * init_std)
        self.register_buffer("current_task", torch.zeros((), dtype=torch.long))
        self.register_buffer("consolidated_tasks", torch.zeros((), dtype=torch.long))

    @property
    def dim(self) -> int:
        return self.d_task + self.d_class

    @property
    def num_seen_classes(self) -> int:
        """Classes of all consolidated tasks (the classes scored at test time)."""
        return int(self.consolidated_tasks) * self.classes_per_task

    def set_current_task(self, t: int) -> None:
        if not 0 <= t < self.num_tasks:
            raise ValueError(f"task {t} is outside 0..{self.num_tasks - 1}")
        self.current_task.fill_(t)

    def task_of(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.div(labels, self.classes_per_task, rounding_mode="floor")

    def _check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}"
            )
        return labels.long()

    def uses_working(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``(class row from M'_c, task row from M'_t)`` for the current task."""
        t = int(self.current_task)
        return labels >= t * self.classes_per_task, self.task_of(labels) >= t

    def keys_for(self, labels: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Unit-norm training keys ``m_y`` ``[n, d_t + d_c]`` of each label (duplicates repeated)."""
        labels = self._check_labels(labels).to(self.work_class.device)
        tasks = self.task_of(labels)
        use_c, use_t = self.uses_working(labels)
        work_c, work_t = (
            (self.work_class, self.work_task)
            if not detach
            else (
                self.work_class.detach(),
                self.work_task.detach(),
            )
        )
        mc = torch.where(use_c.unsqueeze(1), work_c[labels], self.class_memory[labels])
        mt = torch.where(use_t.unsqueeze(1), work_t[tasks], self.task_memory[tasks])
        return F.normalize(torch.cat([mt, mc], dim=-1), dim=-1)

    def keys_seen(self, include_current: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Test keys ``normalize(concat[M_t[tau(c)], M_c[c]])`` for the consolidated classes (``Brain_Net_Vit.forward``
        without labels).

        ``include_current=True`` also scores the current task's classes with their working rows
        (anytime inference during a task). Returns ``(keys [K, d], class_ids [K])``.
        """
        n = self.num_seen_classes
        if include_current:
            n = max(n, (int(self.current_task) + 1) * self.classes_per_task)
        ids = torch.arange(n, device=self.class_memory.device)
        if include_current and n > self.num_seen_classes:
            mc = torch.cat(
                [self.class_memory[: self.num_seen_classes], self.work_class[self.num_seen_classes : n]]
            )
            tasks = self.task_of(ids)
            cons = int(self.consolidated_tasks)
            mt_all = torch.cat([self.task_memory[:cons], self.work_task[cons : int(tasks.max()) + 1]])
            mt = mt_all[tasks]
        else:
            mc, mt = self.class_memory[:n], self.task_memory[self.task_of(ids)]
        return F.normalize(torch.cat([mt, mc], dim=-1), dim=-1), ids

    @torch.no_grad()
    def consolidate(self, t: int) -> None:
        """End of task ``t``: ``M_c[tC:(t+1)C] <- M'_c[tC:(t+1)C]`` and ``M_t[t] <- M'_t[t]`` (detached copies)."""
        if not 0 <= t < self.num_tasks:
            raise ValueError(f"task {t} is outside 0..{self.num_tasks - 1}")
        C = self.classes_per_task
        self.class_memory[t * C : (t + 1) * C] = self.work_class[t * C : (t + 1) * C].detach()
        self.task_memory[t] = self.work_task[t].detach()
        self.consolidated_tasks.fill_(max(int(self.consolidated_tasks), t + 1))

    def working_parameters(self) -> list[nn.Parameter]:
        """The parameters of the memory optimizer (``ContinualModel.set_opt``)."""
        return [self.work_class, self.work_task]
