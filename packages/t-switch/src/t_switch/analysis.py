"""Pulse-curve analysis (paper: the "pulse-like characteristic" of task vectors) and task-vector conflict statistics.

:func:`drop_sweep` evaluates, for every drop ratio ``r``, the sparse-only task vector
``theta_0 + tau~(r)`` and the binarized one ``theta_0 + tau^(r)`` (the two numbers the official scripts
log as "After dropping" / "After binarizing"). The claimed "pulse" shape: accuracy flat or rising up to a
threshold, then collapsing; the binarized curve at or above the sparse one as ``r`` grows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from t_switch.sparsify import drop_by_sign
from t_switch.switch import binarize
from t_switch.task_vector import TaskVector

__all__ = ["DEFAULT_RATIOS", "conflict_statistics", "drop_sweep", "pulse_point"]

DEFAULT_RATIOS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def pulse_point(
    task_vector: Mapping[str, Tensor],
    eval_fn: Callable[[dict[str, Tensor]], float],
    ratio: float,
    legacy_float_floor: bool = False,
) -> dict[str, float]:
    """One point of the pulse curve: ``{"ratio", "density", "sparse", "binary"}`` at drop ratio ``ratio``.

    ``eval_fn(delta)`` receives a task-vector-shaped delta (``tau~`` or ``tau^``), applies it to
    ``theta_0`` and returns the task metric (e.g. with :func:`t_switch.evaluate.run_params`).
    """
    dropped = drop_by_sign(task_vector, ratio, legacy_float_floor)
    sw = binarize(dropped, keep_zero_tensors=True)
    return {
        "ratio": float(ratio),
        "density": sw.density,
        "sparse": float(eval_fn(dict(dropped))),
        "binary": float(eval_fn(dict(sw.to_task_vector()))),
    }


def drop_sweep(
    task_vector: Mapping[str, Tensor],
    eval_fn: Callable[[dict[str, Tensor]], float],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    legacy_float_floor: bool = False,
) -> list[dict[str, float]]:
    """Pulse curve of one task: :func:`pulse_point` at every ratio."""
    return [pulse_point(task_vector, eval_fn, r, legacy_float_floor) for r in ratios]


def conflict_statistics(task_vectors: Mapping[str, TaskVector], drop_ratio: float | None = None) -> dict:
    """Sign conflicts between task vectors (optionally after dropping): for every pair of tasks the
    fraction of entries active in both with opposite signs, and the overall share of entries where
    active tasks disagree on the sign."""
    tasks = list(task_vectors)
    if drop_ratio is not None:
        task_vectors = {t: drop_by_sign(tv, drop_ratio) for t, tv in task_vectors.items()}
    signs = {t: torch.sign(task_vectors[t].flatten()) for t in tasks}
    pair = {}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            both = (signs[a] != 0) & (signs[b] != 0)
            opp = both & (signs[a] != signs[b])
            pair[f"{a}|{b}"] = float(opp.sum()) / max(int(both.sum()), 1)
    S = torch.stack([signs[t] for t in tasks])
    pos, neg = (S > 0).any(0), (S < 0).any(0)
    active = (S != 0).any(0)
    return {
        "pairwise_opposite_sign": pair,
        "conflict_fraction": float((pos & neg).sum()) / max(int(active.sum()), 1),
        "density": {t: float((signs[t] != 0).float().mean()) for t in tasks},
    }
