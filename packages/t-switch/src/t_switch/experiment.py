"""One experiment driver for every table and the quick reproduction (same evaluator for all methods).

:func:`run_merging` takes a module holding ``theta_0``, the task vectors, per-task evaluation loaders,
optional per-task head overrides and query loaders, and runs the configured stages: the baselines of
spec §4, T-Switch (sparse-only and binarized, spec §3.3), Auto-Switch (spec §3.4), the storage report
(spec §3.6) and the pulse curve (spec §3.1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from torch import Tensor, nn

from t_switch.analysis import drop_sweep
from t_switch.baselines import get_method
from t_switch.config import AutoSwitchConfig, BaselineConfig, SwitchConfig
from t_switch.evaluate import (
    evaluate_auto_switch,
    evaluate_merge,
    evaluate_switched,
    run_params,
    score_loader,
)
from t_switch.merge import AutoSwitch, SwitchedModel, TaskSwitchBank
from t_switch.router import KNNRouter, collect_query_features
from t_switch.sparsify import drop_by_sign
from t_switch.storage import storage_report
from t_switch.switch import BinarySwitch
from t_switch.task_vector import TaskVector, state_dict_of

__all__ = ["build_switches", "run_merging"]

logger = logging.getLogger(__name__)


def build_switches(task_vectors: Mapping[str, TaskVector], cfg: SwitchConfig) -> dict[str, BinarySwitch]:
    """T-Switch of every task with the config's settings (spec §3.2)."""
    return {
        t: BinarySwitch.from_task_vector(
            tv,
            cfg.drop_ratio,
            scale=cfg.scale,
            scope=cfg.scope,
            legacy_float_floor=cfg.legacy_float_floor,
            keep_zero_tensors=cfg.keep_zero_tensors,
        )
        for t, tv in task_vectors.items()
    }


def run_merging(
    module: nn.Module,
    task_vectors: Mapping[str, TaskVector],
    eval_loaders: Mapping[str, Iterable],
    switch_cfg: SwitchConfig,
    auto_cfg: AutoSwitchConfig,
    baseline_cfg: BaselineConfig,
    stages: Iterable[str] = ("baselines", "t_switch", "auto_switch", "storage"),
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    query_loaders: Mapping[str, Iterable] | None = None,
    feature_fn: Callable[..., Tensor] | None = None,
    metric: Callable | None = None,
    base_state: Mapping[str, Tensor] | None = None,
    pulse_ratios: Iterable[float] = (),
    model_numel: int | None = None,
    val_loaders: Mapping[str, Iterable] | None = None,
) -> dict:
    """Run the configured stages; returns ``{method: {task: score, "avg": ...}, "storage": ..., ...}``.

    ``base_state`` overrides ``theta_0`` (e.g. zero LoRA factors, :func:`t_switch.merge.lora_zero_base`).
    """
    stages = list(stages)
    unknown = sorted(set(stages) - {"pretrained", "baselines", "t_switch", "auto_switch", "storage", "pulse"})
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}")
    base = dict(base_state) if base_state is not None else state_dict_of(module, include_buffers=True)
    tasks = list(task_vectors)
    missing = [t for t in tasks if t not in eval_loaders]
    if missing:
        raise KeyError(f"no evaluation loader for task(s) {missing}")
    results: dict = {}
    module.eval()
    if "pretrained" in stages:
        results["pretrained"] = evaluate_merge(
            module,
            get_method("weight_averaging")(base, {t: tv * 0.0 for t, tv in task_vectors.items()}),
            eval_loaders,
            overrides,
            metric,
        )
    if "baselines" in stages:
        for name in baseline_cfg.methods:
            hyper = baseline_cfg.hyper(name)
            if name == "task_arithmetic" and baseline_cfg.ta_alpha_grid and val_loaders:
                hyper["alpha"] = _select_alpha(
                    module, base, task_vectors, val_loaders, overrides, metric, baseline_cfg.ta_alpha_grid
                )
            res = get_method(name)(base, task_vectors, **hyper)
            results[name] = evaluate_merge(module, res, eval_loaders, overrides, metric)
            results[name]["storage_bytes"] = res.storage_bytes
            if "alpha" in hyper:
                results[name]["alpha"] = hyper["alpha"]
            logger.info("%s: avg %.2f", name, results[name]["avg"])
    switches = None
    if any(s in stages for s in ("t_switch", "auto_switch", "storage")):
        switches = build_switches(task_vectors, switch_cfg)
    if "t_switch" in stages:
        sparse = {}
        for t in tasks:
            d = drop_by_sign(task_vectors[t], switch_cfg.drop_ratio, switch_cfg.legacy_float_floor)
            params = {n: base[n] + v.to(base[n].dtype) for n, v in d.items()}
            if overrides and t in overrides:
                params.update(overrides[t])
            sparse[t] = score_loader(
                lambda x, p=params: run_params(module, p, *_args(x), **_kwargs(x)), eval_loaders[t], metric
            )
        sparse["avg"] = sum(sparse[t] for t in tasks) / len(tasks)
        results["t_switch_sparse"] = sparse
        bank = TaskSwitchBank(base, switches, lora_mix=auto_cfg.lora_mix)
        results["t_switch"] = evaluate_switched(SwitchedModel(module, bank), eval_loaders, overrides, metric)
        logger.info("T-Switch: avg %.2f (sparse-only %.2f)", results["t_switch"]["avg"], sparse["avg"])
    if "auto_switch" in stages:
        if query_loaders is None:
            raise ValueError("auto_switch needs query loaders (a few training samples per task)")
        bank = TaskSwitchBank(base, switches, lora_mix=auto_cfg.lora_mix)
        switched = SwitchedModel(module, bank)
        feat = feature_fn or (lambda *a, **kw: _logits(module(*a, **kw)))
        qf, ql = collect_query_features(
            feat, {t: query_loaders[t] for t in tasks}, auto_cfg.n_query, unpack=_unpack_batch
        )
        router = KNNRouter(auto_cfg.k, auto_cfg.metric, auto_cfg.backend, num_tasks=len(tasks)).fit(qf, ql)
        auto = AutoSwitch(switched, router, feat, auto_cfg.mode, auto_cfg.granularity)
        results["auto_switch"] = evaluate_auto_switch(auto, eval_loaders, overrides, metric)
        logger.info("Auto-Switch: avg %.2f", results["auto_switch"]["avg"])
    if "storage" in stages:
        results["storage"] = storage_report(
            switches, switch_cfg.group_size, switch_cfg.layout, model_numel=model_numel
        )["total"]
    if "pulse" in stages:
        pulse = {}
        for t in tasks:
            ov = overrides.get(t) if overrides else None

            def eval_fn(delta, t=t, ov=ov):
                params = {n: base[n] + v.to(base[n].dtype) for n, v in delta.items()}
                if ov:
                    params.update(ov)
                return score_loader(
                    lambda x: run_params(module, params, *_args(x), **_kwargs(x)), eval_loaders[t], metric
                )

            pulse[t] = drop_sweep(task_vectors[t], eval_fn, list(pulse_ratios))
        results["pulse"] = pulse
    return results


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _args(x):
    return () if isinstance(x, Mapping) else (x,)


def _kwargs(x):
    return dict(x) if isinstance(x, Mapping) else {}


def _unpack_batch(batch):
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return _args(x), _kwargs(x)


def _select_alpha(module, base, task_vectors, val_loaders, overrides, metric, grid) -> float:
    best, best_a = -float("inf"), grid[0]
    for a in grid:
        res = get_method("task_arithmetic")(base, task_vectors, alpha=a)
        avg = evaluate_merge(module, res, val_loaders, overrides, metric)["avg"]
        if avg > best:
            best, best_a = avg, a
    return float(best_a)
