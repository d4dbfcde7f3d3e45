"""Evaluation shared by the baselines (no method code)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from papers_shared.distributed import gather_rows, shard
from sr_cis.system import summarize

__all__ = ["evaluate_predictor"]


def evaluate_predictor(
    predict: Callable[[torch.Tensor], torch.Tensor],
    test: Dataset,
    task_of_class=None,
    bs: int = 256,
    max_samples=None,
) -> dict:
    """Accuracy of ``predict`` on ``test`` (batches shared over the processes, rows gathered in order)."""
    n = len(test) if max_samples is None else min(len(test), int(max_samples))
    starts = list(range(0, n, bs))
    idx = [i for s in shard(starts) for i in range(s, min(s + bs, n))]
    rows = [(yb.long(), predict(xb).cpu()) for xb, yb in DataLoader(Subset(test, idx), batch_size=bs)]
    rows = gather_rows(rows, starts)
    y = torch.cat([r[0] for r in rows])
    p = torch.cat([r[1] for r in rows])
    return summarize(y, p, p, torch.zeros_like(y, dtype=torch.bool), task_of_class)
