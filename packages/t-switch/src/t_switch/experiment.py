"""Runs a merging table from a config and writes its results.

:func:`run_merging` is the one driver of every table and of the quick reproduction: given a module
holding ``theta_0``, the task vectors, per-task evaluation loaders, optional per-task heads and query
loaders, it runs the configured stages - the pre-trained model, the baselines, T-Switch (sparse-only and
binarized), Auto-Switch, the storage report and the pulse curve - through one evaluator. Its work is a list
of cells (one method on one task, one pulse point, ...); under ``torchrun`` every process scores its share
(:func:`papers_shared.distributed.shard`) and the rows are gathered back in order
(:func:`~papers_shared.distributed.gather_rows`), so N processes give the table one process gives.

:func:`run_experiment` builds a paper table's inputs (CLIP ViT on 8 vision tasks, ViT-LoRA, RoBERTa on
GLUE) or the digits table, runs it and :func:`write_results` stores ``results.json`` (rank 0 only).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from papers_shared.config import save_config
from papers_shared.distributed import (
    barrier,
    gather_rows,
    init_distributed,
    is_main_process,
    shard,
    world_size,
)
from papers_shared.results import write_json
from t_switch.analysis import pulse_point
from t_switch.auto_switch import AutoSwitch
from t_switch.bank import SwitchedModel, TaskSwitchBank, output_tensor
from t_switch.baselines import get_method
from t_switch.config import STAGES, AutoSwitchConfig, BaselineConfig, ExperimentConfig, SwitchConfig
from t_switch.evaluate import score_auto_switch, score_merge, score_params, score_switched
from t_switch.router import KNNRouter, collect_query_features
from t_switch.sparsify import drop_by_sign
from t_switch.storage import storage_report
from t_switch.switch import BinarySwitch
from t_switch.task_vector import TaskVector, state_dict_of

__all__ = ["build_switches", "run_experiment", "run_merging", "write_results"]

logger = logging.getLogger(__name__)


def build_switches(task_vectors: Mapping[str, TaskVector], cfg: SwitchConfig) -> dict[str, BinarySwitch]:
    """T-Switch of every task with the config's settings."""
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


def _unpack_batch(batch):
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return ((), dict(x)) if isinstance(x, Mapping) else ((x,), {})


class _Table:
    """The inputs of one merging table and what its cells need, built lazily (so a process builds only
    what its own share of the cells uses)."""

    def __init__(self, module, task_vectors, eval_loaders, switch_cfg, auto_cfg, base, overrides, query_loaders,
                 feature_fn, metric, device, router):  # fmt: skip
        self.module, self.tvs, self.loaders = module, task_vectors, eval_loaders
        self.switch_cfg, self.auto_cfg, self.base = switch_cfg, auto_cfg, base
        self.overrides, self.query_loaders, self.feature_fn = overrides, query_loaders, feature_fn
        self.metric, self.device, self.router = metric, device, router
        self.all_tasks = list(task_vectors)
        self._merges: dict[str, Any] = {}
        self._switches = None
        self._auto = None

    def merge(self, name: str, hyper: Mapping[str, Any]):
        key = f"{name}:{sorted(hyper.items())}"
        if key not in self._merges:
            self._merges[key] = get_method(name)(self.base, self.tvs, **hyper)
        return self._merges[key]

    @property
    def switches(self) -> dict[str, BinarySwitch]:
        if self._switches is None:
            self._switches = build_switches(self.tvs, self.switch_cfg)
        return self._switches

    def switched(self) -> SwitchedModel:
        return SwitchedModel(
            self.module, TaskSwitchBank(self.base, self.switches, lora_mix=self.auto_cfg.lora_mix)
        )

    def auto(self) -> AutoSwitch:
        if self._auto is None:
            feat = self.feature_fn or (lambda *a, **kw: output_tensor(self.module(*a, **kw)))
            router = self.router
            if router is None:
                if self.query_loaders is None:
                    raise ValueError("auto_switch needs query loaders (a few training samples per task)")
                qf, ql = collect_query_features(
                    feat, {t: self.query_loaders[t] for t in self.all_tasks}, self.auto_cfg.n_query,
                    unpack=lambda b: _unpack_batch(_to_device(b, self.device)),
                )  # fmt: skip
                a = self.auto_cfg
                router = KNNRouter(a.k, a.metric, a.backend, num_tasks=len(self.all_tasks)).fit(qf, ql)
            c = self.auto_cfg
            self._auto = AutoSwitch(self.switched(), router, feat, c.mode, c.granularity, c.temperature)
        return self._auto

    def params_with(self, delta: Mapping[str, Tensor], task: str) -> dict[str, Tensor]:
        params = {
            n: self.base[n] + v.to(device=self.base[n].device, dtype=self.base[n].dtype)
            for n, v in delta.items()
        }
        if self.overrides and task in self.overrides:
            params.update(self.overrides[task])
        return params


def _to_device(batch, device):
    if device is None:
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, Tensor) else batch


def _score(table: _Table, cell: tuple) -> Any:
    """Compute one cell of the table (the unit of work a process takes)."""
    kind, task = cell[0], cell[1]
    ld, ov, dev = table.loaders.get(task), table.overrides, table.device
    metric = table.metric.get(task) if isinstance(table.metric, Mapping) else table.metric
    if kind == "method":
        name, hyper = cell[2], dict(cell[3])
        return score_merge(table.module, table.merge(name, hyper), task, ld, ov, metric, dev)
    if kind == "pretrained":  # theta_0 on the merged tensors, the task's head
        names = next(iter(table.tvs.values())).keys()
        params = {n: table.base[n] for n in names}
        if ov and task in ov:
            params.update(ov[task])
        return score_params(table.module, params, ld, metric, dev)
    if kind == "select":  # Task Arithmetic alpha on a validation loader
        res = table.merge("task_arithmetic", {"alpha": cell[2]})
        return score_merge(table.module, res, task, cell[3], ov, metric, dev)
    if kind == "t_switch_sparse":
        d = drop_by_sign(table.tvs[task], table.switch_cfg.drop_ratio, table.switch_cfg.legacy_float_floor)
        return score_params(table.module, table.params_with(d, task), ld, metric, dev)
    if kind == "t_switch":
        return score_switched(table.switched(), task, ld, ov, metric, dev)
    if kind == "auto_switch":
        return score_auto_switch(table.auto(), task, ld, ov, metric, dev)
    if kind == "pulse":
        return pulse_point(
            table.tvs[task],
            lambda delta: score_params(table.module, table.params_with(delta, task), ld, metric, dev),
            cell[2],
            table.switch_cfg.legacy_float_floor,
        )
    if kind == "storage":
        return storage_report(
            table.switches, table.switch_cfg.group_size, table.switch_cfg.layout, model_numel=cell[2]
        )["total"]
    raise ValueError(f"unknown cell {cell!r}")


_COST = {"auto_switch": 3.0, "pulse": 2.0, "storage": 0.5}


def _cost(table: _Table, cell: tuple) -> float:
    """Rough cost of a cell: batches of its loader, times the forward passes per batch."""
    loader = cell[3] if cell[0] == "select" else table.loaders.get(cell[1])
    try:
        n = len(loader) if loader is not None else 1
    except TypeError:
        n = 1
    return _COST.get(cell[0], 1.0) * max(n, 1)


def _balanced_order(costs: list[float], world: int) -> list[int | None]:
    """An order of the cells (``None`` = padding) such that ``order[rank::world]`` gives every process
    about the same work: longest cells first, each to the least loaded process (deterministic)."""
    loads, parts = [0.0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        loads[r] += costs[i]
        parts[r].append(i)
    depth = max(len(p) for p in parts)
    return [parts[r][k] if k < len(parts[r]) else None for k in range(depth) for r in range(world)]


def _run_cells(table: _Table, cells: list[tuple], progress: bool) -> list[Any]:
    """Every cell's row, in order; under ``torchrun`` each process computes a balanced share."""
    from tqdm.auto import tqdm

    order = list(range(len(cells)))
    if world_size() > 1:
        order = _balanced_order([_cost(table, c) for c in cells], world_size())
    mine = shard(order)
    bar = tqdm(mine, desc="cells", disable=not (progress and is_main_process()))
    rows = gather_rows([None if i is None else _score(table, cells[i]) for i in bar], order)
    out: list[Any] = [None] * len(cells)
    for i, row in zip(order, rows):
        if i is not None:
            out[i] = row
    return out


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
    metric: Callable | Mapping[str, Callable] | None = None,
    base_state: Mapping[str, Tensor] | None = None,
    pulse_ratios: Iterable[float] = (),
    model_numel: int | None = None,
    val_loaders: Mapping[str, Iterable] | None = None,
    router: KNNRouter | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict:
    """Run the configured stages; returns ``{method: {task: score, "avg": ...}, "storage": ..., ...}``.

    ``base_state`` overrides ``theta_0`` (e.g. zero LoRA factors, :func:`t_switch.bank.lora_zero_base`);
    ``router`` is a fitted router used instead of one built from ``query_loaders``; ``device`` is where
    batches go; ``metric`` is one function or one per task (GLUE); only the tasks of ``eval_loaders`` are
    scored (Auto-Switch still routes over every task vector). Every process of a ``torchrun`` launch must call it with the same arguments.
    """
    stages = list(stages)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    base = dict(base_state) if base_state is not None else state_dict_of(module, include_buffers=True)
    tasks = [t for t in task_vectors if t in eval_loaders]  # evaluated tasks; routing knows them all
    unknown = sorted(set(eval_loaders) - set(task_vectors))
    if unknown or not tasks:
        raise KeyError(f"evaluation loaders {sorted(eval_loaders)} must name tasks of {list(task_vectors)}")
    module.eval()
    table = _Table(module, task_vectors, eval_loaders, switch_cfg, auto_cfg, base, overrides, query_loaders,
                   feature_fn, metric, device, router)  # fmt: skip
    methods = list(baseline_cfg.methods) if "baselines" in stages else []
    hypers = {m: baseline_cfg.hyper(m) for m in methods}
    results: dict = {}
    if "task_arithmetic" in methods and baseline_cfg.ta_alpha_grid and val_loaders:
        grid = list(baseline_cfg.ta_alpha_grid)
        vt = [t for t in tasks if t in val_loaders]
        cells = [("select", t, a, val_loaders[t]) for a in grid for t in vt]
        scores = _run_cells(table, cells, progress)
        means = [sum(scores[i * len(vt) : (i + 1) * len(vt)]) / len(vt) for i in range(len(grid))]
        hypers["task_arithmetic"] = {
            "alpha": float(grid[max(range(len(grid)), key=lambda i: (means[i], -i))])
        }
    cells: list[tuple] = []
    if "pretrained" in stages:
        cells += [("pretrained", t) for t in tasks]
    for m in methods:
        cells += [("method", t, m, tuple(sorted(hypers[m].items())), m) for t in tasks]
    if "t_switch" in stages:
        cells += [(k, t) for k in ("t_switch_sparse", "t_switch") for t in tasks]
    if "auto_switch" in stages:
        cells += [("auto_switch", t) for t in tasks]
    if "storage" in stages:
        cells.append(("storage", None, model_numel))
    ratios = list(pulse_ratios) if "pulse" in stages else []
    cells += [("pulse", t, r) for t in tasks for r in ratios]
    rows = _run_cells(table, cells, progress)
    for cell, row in zip(cells, rows):
        kind, task = cell[0], cell[1]
        if kind == "method":
            results.setdefault(cell[4], {})[task] = row
        elif kind in ("pretrained", "t_switch_sparse", "t_switch"):
            results.setdefault(kind, {})[task] = row
        elif kind == "auto_switch":
            entry = results.setdefault("auto_switch", {})
            entry[task], entry[f"routing_{task}"] = row
        elif kind == "storage":
            results["storage"] = row
        elif kind == "pulse":
            results.setdefault("pulse", {}).setdefault(task, []).append(row)
    for name, entry in results.items():
        if name not in ("storage", "pulse"):
            entry["avg"] = sum(entry[t] for t in tasks) / len(tasks)
    for m in methods:
        if "alpha" in hypers[m]:
            results[m]["alpha"] = hypers[m]["alpha"]
    return results


# --------------------------------------------------------------------------------------------- paper tables
def _fmt(template: str, task: str) -> str:
    return template.format(task=task, task_lower=task.lower())


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict:
    """Run one table; returns the results dict (every process gets the whole table)."""
    if cfg.kind == "digits":
        from t_switch.quick import run_digits

        return run_digits(cfg.digits)
    info = init_distributed(cfg.device)
    if cfg.kind == "glue":
        return _run_glue(cfg, info.device, progress)
    return _run_vit(cfg, info.device, progress)


def write_results(cfg: ExperimentConfig, results: Mapping, out_dir: str | Path | None = None) -> Path:
    """``<out>/<name>/results.json`` and ``config.yaml``, written by rank 0 only; returns the JSON path."""
    out = Path(out_dir or cfg.out_dir) / cfg.name
    path = out / "results.json"
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_json(results, path)
    barrier()
    return path


def _prefixed(ft_state: Mapping[str, Tensor], module: nn.Module, prefix: str) -> dict[str, Tensor]:
    """The module's parameters with ``prefix + name`` replaced by the fine-tuned tensors; fine-tuned
    tensors the module does not hold are kept, so that :func:`task_vector` reports them."""
    out = {n: p.detach() for n, p in module.named_parameters()}
    buffers = {n for n, _ in module.named_buffers()}
    for k, v in ft_state.items():
        if prefix + k in out:
            out[prefix + k] = v.to(out[prefix + k].device)
        elif prefix + k not in buffers:
            out[prefix + k] = v
    return out


def _run_vit(cfg: ExperimentConfig, device: torch.device, progress: bool) -> dict:
    from t_switch.data import DEFAULT_VISION_DATASETS, load_dataset, resolve_model, subset, vision_loader

    path = resolve_model(cfg.pretrained)  # before the slow imports: a missing path fails at once
    from transformers import AutoProcessor, CLIPModel, CLIPVisionModel

    from t_switch.heads import CLIP_TEMPLATES, ClipEncoder, zeroshot_head
    from t_switch.task_vector import task_vector

    clip = CLIPModel.from_pretrained(path).eval().to(device)
    processor = AutoProcessor.from_pretrained(path)
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    enc = ClipEncoder(vision, clip.visual_projection, float(clip.logit_scale.exp())).eval().to(device)
    datasets = {**DEFAULT_VISION_DATASETS, **cfg.datasets}
    heads, evals, queries, trains = {}, {}, {}, {}
    for t in cfg.tasks:
        if t not in datasets:
            raise FileNotFoundError(f"no dataset known for task {t!r}; set datasets.{t}=<hub id or folder>")
        test = subset(load_dataset(datasets[t], cfg.eval_split), cfg.eval_subset)
        train = load_dataset(datasets[t], "train")
        names = train.features["label"].names
        heads[t] = {
            "head.weight": zeroshot_head(
                clip, processor.tokenizer, names, CLIP_TEMPLATES.get(t, ["a photo of a {}."])
            )
        }
        evals[t] = vision_loader(test, processor.image_processor, cfg.batch_size, num_workers=cfg.num_workers)
        queries[t] = vision_loader(
            train, processor.image_processor, cfg.auto.n_query, shuffle=True, seed=cfg.seed
        )
        trains[t] = train
    base_state = None
    if cfg.kind == "vit_lora":
        tvs, module, base_state, heads = _lora_task_vectors(
            cfg, enc, heads, trains, processor, device, progress
        )
    else:
        module, tvs = enc, {}
        for t in cfg.tasks:
            ft = CLIPVisionModel.from_pretrained(
                resolve_model(_fmt(cfg.finetuned, t), _fmt(cfg.finetuned_subfolder, t))
            )
            ft_state = _prefixed(ft.state_dict(), enc, "vision.")
            tvs[t] = task_vector(
                enc, ft_state, exclude=cfg.switch.exclude, unexpected=cfg.switch.unexpected_keys
            )
            del ft
    feat = (lambda x: module.base_model.model.embed(x)) if cfg.kind == "vit_lora" else enc.embed
    return run_merging(
        module, tvs, evals, cfg.switch, cfg.auto, cfg.baselines, cfg.stages, overrides=heads,
        query_loaders=queries, feature_fn=feat, base_state=base_state, pulse_ratios=cfg.pulse_ratios,
        model_numel=sum(p.numel() for p in enc.vision.parameters()), device=device, progress=progress,
    )  # fmt: skip


def _lora_task_vectors(cfg, enc, heads, trains, processor, device, progress):
    """LoRA fine-tuning of every task (tasks shared out over the processes), then the factors."""
    from peft import LoraConfig, get_peft_model

    from t_switch.bank import lora_zero_base
    from t_switch.data import subset, vision_loader
    from t_switch.task_vector import lora_task_vector
    from t_switch.trainer import train_lora

    lcfg = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none")  # fmt: skip
    root = Path(cfg.out_dir) / cfg.name
    peft_heads = {t: {f"base_model.model.{k}": v for k, v in h.items()} for t, h in heads.items()}

    def batches_for(t):
        ds = subset(trains[t], cfg.lora.max_train_samples)
        return lambda epoch: vision_loader(
            ds, processor.image_processor, cfg.lora.batch_size, True, cfg.seed + epoch, cfg.num_workers
        )

    for t in shard(cfg.tasks):  # each process trains its share of the tasks; the others read the cache
        m = get_peft_model(copy.deepcopy(enc), lcfg)
        train_lora(m, peft_heads[t], batches_for(t), cfg.lora, root / f"lora_{t}", progress, device)
    barrier()
    tvs = {}
    for t in cfg.tasks:
        m = get_peft_model(copy.deepcopy(enc), lcfg)
        tvs[t] = lora_task_vector(
            train_lora(m, peft_heads[t], batches_for(t), cfg.lora, root / f"lora_{t}", False, device)
        )
    module = get_peft_model(copy.deepcopy(enc), lcfg).eval()
    return tvs, module, lora_zero_base(module), peft_heads


def _run_glue(cfg: ExperimentConfig, device: torch.device, progress: bool) -> dict:
    from t_switch.data import load_dataset, resolve_model, subset, text_loader

    path = resolve_model(cfg.pretrained)  # before the slow imports: a missing path fails at once
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from t_switch.evaluate import glue_metric
    from t_switch.task_vector import task_vector

    tok = AutoTokenizer.from_pretrained(path)
    pre = AutoModelForSequenceClassification.from_pretrained(path).eval().to(device)
    tvs, heads, evals, queries, vals, metrics = {}, {}, {}, {}, {}, {}
    for t in cfg.tasks:
        ft = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(_fmt(cfg.finetuned, t), _fmt(cfg.finetuned_subfolder, t))
        ).to(device)
        tvs[t] = task_vector(pre, ft, exclude=cfg.switch.exclude, unexpected=cfg.switch.unexpected_keys)
        heads[t] = {n: p.detach() for n, p in ft.named_parameters() if "classifier" in n}
        spec = cfg.datasets.get(t, f"nyu-mll/glue:{t}")
        test_split = "validation_matched" if t == "mnli" else "validation"
        train = load_dataset(spec, "train").train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
        mk = lambda ds, t=t: text_loader(ds, tok, t, cfg.batch_size, cfg.max_length)  # noqa: E731
        evals[t] = mk(subset(load_dataset(spec, test_split), cfg.eval_subset))
        queries[t] = mk(train["train"].shuffle(seed=cfg.seed))
        vals[t] = mk(subset(train["test"], cfg.eval_subset))
        metrics[t] = glue_metric(t)
        del ft

    def feat(input_ids, attention_mask=None, **_):
        return pre.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    numel = sum(p.numel() for n, p in pre.named_parameters() if "classifier" not in n)
    return run_merging(
        pre, tvs, evals, cfg.switch, cfg.auto, cfg.baselines, cfg.stages, overrides=heads, query_loaders=queries,
        feature_fn=feat, metric=metrics, pulse_ratios=cfg.pulse_ratios, val_loaders=vals, model_numel=numel,
        device=device, progress=progress,
    )  # fmt: skip
