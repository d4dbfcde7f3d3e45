"""Evaluation after every task: class-IL and task-IL accuracy per task, vMF-ODI statistics, System2.

:func:`evaluate` follows the official ``utils/training.py:evaluate_brain_co`` (commit 8c8ad10): test
mini-batches of ``test_batch_size`` from one task's loader at a time, vMF-ODI standardising within each
mini-batch, task-IL by masking the scores to the task's classes. Under ``torchrun`` the mini-batches are
shared out between processes (:func:`papers_shared.distributed.shard`) and their rows gathered back in
order, so the table equals the one-process table (System2, when consulted, runs on each process's share).
:class:`StreamResult` holds everything one (method, seed) run measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from icl_vmf.interaction import InteractionStats, InteractiveClassifier
from icl_vmf.odi import VMFOutlierDetector
from icl_vmf.system2 import System2
from papers_shared import distributed as dist
from papers_shared.metrics import forgetting

__all__ = ["StreamResult", "evaluate"]


@dataclass
class StreamResult:
    """Everything one (method, seed) run measured. Accuracies are fractions in [0, 1]."""

    method: str
    seed: int
    dataset: str
    class_il: list[list[float | None]]  # a[t][s] after task t on task s
    task_il: list[list[float | None]]
    odi: list[dict[str, float]] = field(default_factory=list)  # per evaluation (after each task)
    final_class_il_with_system2: list[float] | None = None  # per task, after the last task
    system2: dict[str, float] | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean loss per task

    @staticmethod
    def _avg(row: list[float | None]) -> float:
        vals = [v for v in row if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def average_per_task(self) -> list[float]:
        """Mean class-IL accuracy over the seen tasks after each task (the code's mean_acc curve)."""
        return [self._avg(r) for r in self.class_il if any(v is not None for v in r)]

    @property
    def final_average(self) -> float:
        return self.average_per_task[-1]

    @property
    def final_average_task_il(self) -> float:
        return [self._avg(r) for r in self.task_il if any(v is not None for v in r)][-1]

    @property
    def final_average_with_system2(self) -> float | None:
        return (
            None
            if self.final_class_il_with_system2 is None
            else float(np.mean(self.final_class_il_with_system2))
        )

    @property
    def forgetting(self) -> float:
        arr = np.array([[np.nan if v is None else v for v in r] for r in self.class_il])
        return forgetting(arr)

    @property
    def bwt(self) -> float:
        """Backward transfer ``mean_{s<T} (a[T, s] - a[s, s])``."""
        a = self.class_il
        T = len(a) - 1
        return float(np.mean([a[T][s] - a[s][s] for s in range(T)])) if T > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "final_class_il": self.final_average,
            "final_task_il": self.final_average_task_il,
            "final_class_il_with_system2": self.final_average_with_system2,
            "forgetting": self.forgetting,
            "bwt": self.bwt,
            "average_per_task": self.average_per_task,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["summary"] = self.summary()
        return d


def _num_batches(dataset: Dataset, batch_size: int) -> int:
    return -(-len(dataset) // batch_size)


def _batch(dataset: Dataset, b: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test mini-batch ``b`` (in order, no shuffling)."""
    lo, hi = b * batch_size, min((b + 1) * batch_size, len(dataset))
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        return x[lo:hi], y[lo:hi]
    x, y = default_collate([dataset[i][:2] for i in range(lo, hi)])
    return x, torch.as_tensor(y).long()


@torch.no_grad()
def evaluate(
    learner,
    data,
    upto: int,
    cfg,
    system2: System2 | None = None,
) -> tuple[list[float], list[float], InteractionStats, list[float] | None]:
    """Accuracy on the test set of every task ``<= upto`` (class-IL, task-IL by masking to the task's
    classes), vMF-ODI statistics per test mini-batch of ``cfg.train.test_batch_size`` from one task's
    loader, and, with ``system2``, the accuracy after the interaction.

    Several processes share the mini-batches when the detector judges each mini-batch on its own
    (``odi.scope=batch``, ``odi.mode=zscore``); the running and random detectors depend on the order of
    all batches, so then every process evaluates everything.
    """
    detector = VMFOutlierDetector(cfg.odi.z_threshold, cfg.odi.scope, cfg.odi.mode, cfg.odi.random_fraction)
    inter = InteractiveClassifier(learner.scores, system2, detector, cfg.system2.k, data.class_names)
    C, bs = data.classes_per_task, cfg.train.test_batch_size
    items = [(s, b) for s in range(upto + 1) for b in range(_num_batches(data.test_sets[s], bs))]
    split = cfg.odi.scope == "batch" and cfg.odi.mode == "zscore" and dist.world_size() > 1
    rows = []
    for s, b in dist.shard(items) if split else items:
        x, y = _batch(data.test_sets[s], b, bs)
        x, y = x.to(learner.device), y.to(learner.device)
        pred, info = inter.predict(x, y, use_system2=system2 is not None)
        scores, ids = info.scores, info.class_ids
        in_task = (ids >= s * C) & (ids < (s + 1) * C)
        tpred = ids[scores.masked_fill(~in_task.to(scores.device), float("-inf")).argmax(1)]
        stats = InteractionStats()
        stats.update(info, pred, y)
        ok = (int((info.system1_pred == y).sum()), int((tpred == y).sum()), int((pred == y).sum()))
        rows.append((y.numel(), *ok, stats))
    if split:
        rows = dist.gather_rows(rows, items)
    counts = np.zeros((upto + 1, 4), dtype=np.int64)
    total = InteractionStats()
    for (s, _), (n, ok1, okt, okf, stats) in zip(items, rows):
        counts[s] += (n, ok1, okt, okf)
        total.merge(stats)
    cil = [int(c[1]) / int(c[0]) for c in counts]
    til = [int(c[2]) / int(c[0]) for c in counts]
    final = [int(c[3]) / int(c[0]) for c in counts]
    return cil, til, total, final if system2 is not None else None
