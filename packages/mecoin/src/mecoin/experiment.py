"""Runs a paper table from a config and writes its results.

``run_experiment`` runs every method and seed of an :class:`~mecoin.config.ExperimentConfig` on one
split and one pre-trained encoder per seed, and writes ``<out>/<name>/results.json`` (per-session
accuracy, average accuracy, PD, forgetting and the accuracy matrix of every run, mean and std over seeds)
plus, for Mecoin, the trained memory of each seed as safetensors (``mecoin-seed<S>.safetensors``, read
back by :func:`evaluate_memory` / ``mecoin eval``). ``run_ablation`` runs the Mecoin variants of
:data:`mecoin.config.ABLATIONS`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

from mecoin.baselines import ProbeBaseline, PrototypeBaseline, SupervisedBaseline
from mecoin.config import ABLATIONS, ExperimentConfig
from mecoin.data import GFSCILTask, build_task
from mecoin.method import MecoinMethod
from mecoin.model import load_mecoin, save_mecoin
from mecoin.session import GFSCILMethod, evaluate_session
from mecoin.trainer import pretrain_task, resolve_device, run_method, session_graphs
from papers_shared.config import ConfigError, config_to_dict, from_dict
from papers_shared.errors import CheckpointError
from papers_shared.metrics import RunReport
from papers_shared.results import write_json

__all__ = [
    "build_method",
    "evaluate_memory",
    "run_ablation",
    "run_experiment",
    "run_gfscil",
    "summarize",
]


def build_method(name: str, cfg: ExperimentConfig, seed: int) -> GFSCILMethod:
    """A method of the runner by name (``mecoin`` or a baseline)."""
    sel = cfg.protocol.select_best_val
    if name == "mecoin":
        mcfg = copy.deepcopy(cfg.mecoin)
        mcfg.seed = seed
        return MecoinMethod(mcfg, select_best_val=sel)
    if name in ("ncm", "teen"):
        return PrototypeBaseline(name, cfg.baselines)
    if name == "probe":
        return ProbeBaseline(cfg.baselines, seed=seed)
    if name == "finetune_last":
        m = SupervisedBaseline("finetune", cfg.baselines, select_best_val=False, seed=seed)
        m.name = "finetune_last"
        return m
    return SupervisedBaseline(name, cfg.baselines, select_best_val=sel, seed=seed)


def run_gfscil(
    dataset: str | GFSCILTask,
    config: ExperimentConfig | None = None,
    method: str = "mecoin",
    seed: int | None = None,
) -> RunReport:
    """Full protocol for one method and seed: pre-training, then sessions ``0..T``."""
    cfg = copy.deepcopy(config) if config is not None else ExperimentConfig()
    seed = cfg.seeds[0] if seed is None else seed
    if isinstance(dataset, str):
        cfg.dataset = dataset
        task = build_task(cfg, seed)
    else:
        task = dataset
    device = resolve_device(cfg.device)
    task.to(device)
    pretrained = pretrain_task(task, cfg, seed, device)
    return run_method(task, pretrained, cfg, build_method(method, cfg, seed), seed, device)


def summarize(reports: Sequence[RunReport]) -> dict:
    """Mean/std over seeds per method of the per-session accuracy, average accuracy, PD, forgetting
    (percent), plus the per-seed values (for paired claims)."""
    import numpy as np

    out: dict[str, dict] = {}
    for name in dict.fromkeys(r.method for r in reports):
        rs = [r for r in reports if r.method == name]
        accs = np.array([r.accs for r in rs]) * 100
        stat = {
            "accs_mean": accs.mean(0).tolist(),
            "accs_std": accs.std(0).tolist(),
            "seeds": [r.seed for r in rs],
        }
        for key in ("avg", "pd", "last", "forgetting"):
            vals = np.array([getattr(r, key) for r in rs], dtype=float) * 100
            stat[key] = float(vals.mean())
            stat[f"{key}_std"] = float(vals.std())
            stat[f"{key}_per_seed"] = vals.tolist()
        out[name] = stat
    return out


def memory_path(out: Path, seed: int) -> Path:
    return out / f"mecoin-seed{seed}.safetensors"


def run_experiment(cfg: ExperimentConfig, resume: bool = False, out_dir: str | Path | None = None) -> dict:
    """Every method and seed of ``cfg``; writes ``<out>/<name>/results.json``, each run's report and
    Mecoin's trained memory per seed."""
    out = Path(out_dir or cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    reports: list[RunReport] = []
    for seed in cfg.seeds:
        task = build_task(cfg, seed).to(device)
        pretrained = pretrain_task(task, cfg, seed, device, cache_dir=out / "pretrain")
        for name in cfg.methods:
            report_path = out / f"{name}-seed{seed}.json"
            if resume and report_path.is_file():
                reports.append(RunReport(**_report_fields(json.loads(report_path.read_text()))))
                continue
            method = build_method(name, cfg, seed)
            rep = run_method(
                task,
                pretrained,
                cfg,
                method,
                seed,
                device,
                checkpoint_dir=out / "ckpt" / f"{name}-seed{seed}",
                resume=resume,
            )
            if isinstance(method, MecoinMethod):
                meta = {"experiment": config_to_dict(cfg), "seed": seed, "sessions": len(rep.accs)}
                save_mecoin(method.model, memory_path(out, seed), cfg.encoder, meta)
            write_json(rep.to_dict(), report_path)
            reports.append(rep)
    result = {
        "name": cfg.name,
        "dataset": cfg.dataset,
        "summary": summarize(reports),
        "runs": [r.to_dict() for r in reports],
        "config": config_to_dict(cfg),
        "git": _git_hash(),
    }
    write_json(result, out / "results.json")
    return result


def run_ablation(
    cfg: ExperimentConfig, variants: Sequence[str], resume: bool = False, out_dir: str | Path | None = None
) -> dict:
    """Mecoin under each named variant of :data:`~mecoin.config.ABLATIONS`; writes ``ablation.json``."""
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown or not variants:
        raise ConfigError(f"unknown ablation variant(s) {unknown}; known: {list(ABLATIONS)}")
    root = Path(out_dir or cfg.out_dir) / cfg.name
    summary = {}
    for v in variants:
        mecoin = {**config_to_dict(cfg.mecoin), **ABLATIONS[v]}
        vcfg = copy.deepcopy(cfg)
        vcfg.methods, vcfg.name = ["mecoin"], f"{cfg.name}-{v}"
        vcfg.mecoin = from_dict(type(cfg.mecoin), mecoin)
        summary[v] = run_experiment(vcfg, resume=resume, out_dir=root / "ablation")["summary"]["mecoin"]
    write_json({"variants": summary, "config": config_to_dict(cfg)}, root / "ablation.json")
    return summary


def evaluate_memory(path: str | Path, cfg: ExperimentConfig | None = None) -> dict:
    """Accuracy of a saved Mecoin memory on the test nodes of every session it has learnt.

    The task (graph, protocol, seed) is the one stored in the file; ``cfg`` only supplies ``data_root``,
    ``device`` and ``progress``. The file is read (and refused if damaged) before any data is loaded.
    """
    device = resolve_device(cfg.device if cfg is not None else "cpu")
    model, meta = load_mecoin(path, device)
    try:
        run_cfg = from_dict(ExperimentConfig, meta["experiment"])
        seed, sessions = int(meta["seed"]), int(meta["sessions"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} lacks the run it came from ({exc}); was it written by `mecoin run`?"
        ) from None
    if cfg is not None:
        run_cfg.data_root, run_cfg.device, run_cfg.progress = cfg.data_root, cfg.device, cfg.progress
    task = build_task(run_cfg, seed).to(device)
    if task.num_classes != model.num_classes or task.data.x.shape[1] != model.encoder.in_dim:
        raise CheckpointError(f"{path} does not fit the graph {run_cfg.dataset} it names")
    graphs = session_graphs(task, run_cfg).to(device)
    t = min(sessions, len(task.split)) - 1
    method = MecoinMethod(model.config, model=model)
    from mecoin.session import SessionContext

    ei, ew = graphs.for_classes(task.split.seen_classes(t))
    res = evaluate_session(method, SessionContext(task, t, run_cfg.protocol, ei, ew, device))
    return {
        "memory": str(path),
        "dataset": run_cfg.dataset,
        "seed": seed,
        "session": t,
        "accuracy": 100 * res.accuracy,
        "group_accuracies": [100 * a for a in res.group_accuracies],
    }


def _report_fields(d: dict) -> dict:
    return {k: d[k] for k in ("method", "dataset", "seed", "accs", "acc_matrix", "config", "extra")}


def _git_hash() -> str | None:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
