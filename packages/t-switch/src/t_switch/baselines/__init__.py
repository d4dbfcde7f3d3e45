"""Training-free merging baselines and T-Switch behind one signature, by name.

``BASELINES[name](pretrained, task_vectors, **hyper) -> MergeResult``: static methods in
:mod:`t_switch.baselines.static`, dynamic ones in :mod:`t_switch.baselines.dynamic`, and T-Switch itself
(:func:`t_switch`) so that every method goes through the same evaluator.
"""

from __future__ import annotations

from collections.abc import Callable

from t_switch.baselines.base import MergeResult, prepare
from t_switch.baselines.dynamic import emr_merging, individual, tall_masks
from t_switch.baselines.static import consensus, dare, task_arithmetic, ties_merging, weight_averaging
from t_switch.switch import BinarySwitch

__all__ = [
    "BASELINES",
    "MergeResult",
    "consensus",
    "dare",
    "emr_merging",
    "get_method",
    "individual",
    "t_switch",
    "tall_masks",
    "task_arithmetic",
    "ties_merging",
    "weight_averaging",
]


def t_switch(
    pretrained, task_vectors, drop_ratio: float = 0.6, group_size: int = 4, **switch_kw
) -> MergeResult:
    """T-Switch under the baseline signature: task ``k`` uses ``tau^_k = lambda S``."""
    from t_switch.storage import storage_report

    pre, tasks, _ = prepare(pretrained, task_vectors)
    switches = {
        t: BinarySwitch.from_task_vector(tv, drop_ratio, **switch_kw) for t, tv in task_vectors.items()
    }
    rep = storage_report(switches, group_size)
    return MergeResult(
        "t_switch",
        tasks,
        pre,
        per_task=lambda t: dict(switches[t].to_task_vector()),
        storage_bytes=int(rep["total"]["total_bytes"]),
        info={"switches": switches, "storage": rep["total"]},
    )


BASELINES: dict[str, Callable[..., MergeResult]] = {
    "individual": individual,
    "weight_averaging": weight_averaging,
    "task_arithmetic": task_arithmetic,
    "ties": ties_merging,
    "dare": dare,
    "emr": emr_merging,
    "tall_masks": tall_masks,
    "consensus": consensus,
    "t_switch": t_switch,
}


def get_method(name: str) -> Callable[..., MergeResult]:
    if name not in BASELINES:
        raise KeyError(f"unknown merging method {name!r}; available: {sorted(BASELINES)}")
    return BASELINES[name]
