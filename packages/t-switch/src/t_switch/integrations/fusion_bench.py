"""FusionBench adapter (tanganke/fusion_bench). ``fusion-bench`` is *not* a dependency of this package.

FusionBench (``pip install fusion-bench``; it installed cleanly next to torch 2.15 / transformers 5 in a
throwaway environment, but pulls in lightning, hydra and ~100 packages, so it stays optional) exposes
model pools with ``model_names``, ``load_model(name)`` and ``load_pretrained_model()``. The functions here
use only that duck-typed interface, so they work with any FusionBench ``BaseModelPool`` without
importing FusionBench:

    pool = ...  # a fusion_bench BaseModelPool (e.g. CLIP ViT-B/32 on the 8 TALL tasks)
    result = t_switch_from_pool(pool, drop_ratio=0.6)
    model = result.switched            # SwitchedModel; model(x, weights="sun397") runs T-Switch
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from t_switch.bank import SwitchedModel, TaskSwitchBank
from t_switch.switch import BinarySwitch
from t_switch.task_vector import task_vector

__all__ = ["PoolSwitches", "t_switch_from_pool", "task_vectors_from_pool"]


def task_vectors_from_pool(pool, exclude=()) -> tuple[nn.Module, dict]:
    """``(pretrained_module, {model_name: TaskVector})`` from a FusionBench-style model pool."""
    for attr in ("model_names", "load_model", "load_pretrained_model"):
        if not hasattr(pool, attr):
            raise TypeError(f"expected a FusionBench model pool (missing {attr!r})")
    pre = pool.load_pretrained_model()
    tvs = {name: task_vector(pre, pool.load_model(name), exclude=exclude) for name in pool.model_names}
    return pre, tvs


@dataclass
class PoolSwitches:
    pretrained: nn.Module
    switches: dict[str, BinarySwitch]
    switched: SwitchedModel


def t_switch_from_pool(pool, drop_ratio: float = 0.6, exclude=(), **switch_kw) -> PoolSwitches:
    """T-Switch every fine-tuned model of the pool against its ``_pretrained_`` model."""
    pre, tvs = task_vectors_from_pool(pool, exclude)
    sws = {n: BinarySwitch.from_task_vector(tv, drop_ratio, **switch_kw) for n, tv in tvs.items()}
    return PoolSwitches(pre, sws, SwitchedModel(pre, TaskSwitchBank(pre, sws)))
