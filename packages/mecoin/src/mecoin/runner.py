"""The GFSCIL session runner (spec §3.10, §5): one protocol, one evaluator, every method.

``run_method`` drives one method through sessions ``0..T`` of a task: session graph (edges between
seen-class nodes, spec §2), ``fit_session``, evaluation of the joint test set and of each session group
(accuracy matrix), atomic checkpoints after every session and ``resume``. ``run_experiment`` runs the
methods and seeds of an :class:`~mecoin.config.ExperimentConfig` and writes ``results.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import torch

from mecoin.baselines import PrototypeBaseline, SupervisedBaseline
from mecoin.config import ExperimentConfig
from mecoin.data import GFSCILTask, build_task
from mecoin.encoders import PretrainResult, build_encoder, pretrain_encoder
from mecoin.graph import SessionGraphs
from mecoin.session import GFSCILMethod, SessionContext, evaluate_session
from mecoin.trainer import MecoinTrainer
from papers_shared.checkpoints import CheckpointManager, atomic_save, atomic_write_text, load_checkpoint
from papers_shared.config import config_to_dict
from papers_shared.device import get_device, seed_everything
from papers_shared.metrics import AccuracyMatrix, RunReport

__all__ = ["build_method", "pretrain_task", "run_experiment", "run_gfscil", "run_method", "summarize"]


def build_method(name: str, cfg: ExperimentConfig, seed: int) -> GFSCILMethod:
    """A method of the runner by name (``mecoin`` or a baseline of spec §4)."""
    sel = cfg.protocol.select_best_val
    if name == "mecoin":
        mcfg = copy.deepcopy(cfg.mecoin)
        mcfg.seed = seed
        return MecoinTrainer(mcfg, select_best_val=sel)
    if name in ("ncm", "teen"):
        return PrototypeBaseline(name, cfg.baselines)
    return SupervisedBaseline(name, cfg.baselines, select_best_val=sel, seed=seed)


def _graphs(task: GFSCILTask, cfg: ExperimentConfig) -> SessionGraphs:
    data = task.data
    return SessionGraphs(data.edge_index, data.y, renormalize=cfg.protocol.renormalize_masked)


def _fingerprint(cfg: ExperimentConfig, seed: int) -> str:
    keys = {
        "dataset": cfg.dataset,
        "csbm": config_to_dict(cfg.csbm) if cfg.dataset == "csbm" else None,
        "protocol": config_to_dict(cfg.protocol),
        "encoder": config_to_dict(cfg.encoder),
        "pretrain": config_to_dict(cfg.pretrain),
        "seed": seed,
    }
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_task(
    task: GFSCILTask,
    cfg: ExperimentConfig,
    seed: int,
    device: torch.device | None = None,
    cache_dir: str | Path | None = None,
    graphs: SessionGraphs | None = None,
) -> PretrainResult:
    """Pre-train the encoder on the base session (spec §3.1), cached under ``cache_dir`` by a
    fingerprint of the data/protocol/encoder/pretrain config and the seed."""
    device = device or get_device(cfg.device)
    graphs = graphs or _graphs(task, cfg)
    data = task.data
    seed_everything(seed)
    encoder = build_encoder(cfg.encoder, data.x.shape[1]).to(device)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"encoder-{cfg.dataset}-{cfg.encoder.backbone}-{_fingerprint(cfg, seed)}.pt"
        if path.is_file():
            state = load_checkpoint(path, map_location=device)
            classifier = torch.nn.Linear(encoder.out_dim, task.num_classes).to(device)
            encoder.load_state_dict(state["encoder"])
            classifier.load_state_dict(state["classifier"])
            return PretrainResult(encoder.eval(), classifier.eval(), **state["log"])
    ei, ew = graphs.for_classes(task.base_classes)
    res = pretrain_encoder(
        encoder,
        data.x,
        data.y,
        ei,
        ew,
        task.pretrain_train_idx.to(device),
        task.pretrain_val_idx.to(device),
        task.num_classes,
        cfg.pretrain,
        progress=cfg.progress,
    )
    if path is not None:
        log = {"best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run}
        state = {"encoder": res.encoder.state_dict(), "classifier": res.classifier.state_dict(), "log": log}
        atomic_save(state, path)
    return res


def run_method(
    task: GFSCILTask,
    pretrained: PretrainResult,
    cfg: ExperimentConfig,
    method: str | GFSCILMethod,
    seed: int,
    device: torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> RunReport:
    """Sessions ``0..T`` of one method: per-session accuracy, accuracy matrix, timings, memory."""
    device = device or get_device(cfg.device)
    task.to(device)
    graphs = _graphs(task, cfg).to(device)
    seed_everything(seed)
    m = build_method(method, cfg, seed) if isinstance(method, str) else method
    name = m.name if not isinstance(method, str) else method
    T = len(task.split)

    def context(t: int) -> SessionContext:
        ei, ew = graphs.for_classes(task.split.seen_classes(t))
        return SessionContext(task, t, cfg.protocol, ei, ew, device, progress=cfg.progress)

    m.setup(context(0), pretrained)
    matrix = AccuracyMatrix(T)
    accs: list[float] = []
    logs: list[dict] = []
    start = 0
    mgr = CheckpointManager(checkpoint_dir, keep=1) if checkpoint_dir is not None else None
    if mgr is not None and resume:
        state = mgr.load_latest(map_location=device)
        if state is not None:
            m.load_state_dict(state["method"])
            accs, logs = state["accs"], state["logs"]
            for t, row in enumerate(state["matrix"][: len(accs)]):
                for s in range(t + 1):
                    matrix.set(t, s, row[s])
            start = len(accs)
    sessions = range(start, T)
    if cfg.progress:
        from tqdm.auto import tqdm

        sessions = tqdm(sessions, desc=f"{name} seed {seed}", initial=start, total=T, leave=False)
    for t in sessions:
        ctx = context(t)
        t0 = time.perf_counter()
        info = m.fit_session(ctx)
        fit_s = time.perf_counter() - t0
        res = evaluate_session(m, ctx)
        accs.append(res.accuracy)
        for s, a in enumerate(res.group_accuracies):
            matrix.set(t, s, a)
        logs.append({**{k: float(v) for k, v in info.items()}, "fit_seconds": fit_s})
        if mgr is not None and cfg.checkpoint_every_session:
            mgr.save(t, {"method": m.state_dict(), "accs": accs, "logs": logs, "matrix": matrix.tolist()})
    extra = {
        "session_logs": logs,
        "memory_bytes": m.memory_bytes(),
        "pretrain": {"best_val_acc": pretrained.best_val_acc, "best_epoch": pretrained.best_epoch},
        "protocol": task.split.protocol,
        "classes": [list(s.classes) for s in task.split],
    }
    return RunReport(name, task.name, seed, accs, matrix.tolist(), config_to_dict(cfg), extra)


def run_gfscil(
    dataset: str | GFSCILTask,
    config: ExperimentConfig | None = None,
    method: str = "mecoin",
    seed: int | None = None,
) -> RunReport:
    """Full protocol for one method and seed (spec §7 API): pre-training, then sessions ``0..T``."""
    cfg = copy.deepcopy(config) if config is not None else ExperimentConfig()
    seed = cfg.seeds[0] if seed is None else seed
    if isinstance(dataset, str):
        cfg.dataset = dataset
        task = build_task(cfg, seed)
    else:
        task = dataset
    device = get_device(cfg.device)
    task.to(device)
    pretrained = pretrain_task(task, cfg, seed, device)
    return run_method(task, pretrained, cfg, method, seed, device)


def summarize(reports: list[RunReport]) -> dict:
    """Mean/std over seeds per method of the per-session accuracy, average accuracy, PD, forgetting."""
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
        out[name] = stat
    return out


def run_experiment(cfg: ExperimentConfig, resume: bool = False, out_dir: str | Path | None = None) -> dict:
    """Every method and seed of ``cfg``; writes ``<out>/results.json`` and each run's report."""
    out = Path(out_dir or cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    device = get_device(cfg.device)
    reports: list[RunReport] = []
    for seed in cfg.seeds:
        task = build_task(cfg, seed).to(device)
        pretrained = pretrain_task(task, cfg, seed, device, cache_dir=out / "pretrain")
        for name in cfg.methods:
            report_path = out / f"{name}-seed{seed}.json"
            if resume and report_path.is_file():
                reports.append(RunReport(**_report_fields(json.loads(report_path.read_text()))))
                continue
            rep = run_method(
                task,
                pretrained,
                cfg,
                name,
                seed,
                device,
                checkpoint_dir=out / "ckpt" / f"{name}-seed{seed}",
                resume=resume,
            )
            rep.save(report_path)
            reports.append(rep)
    result = {
        "name": cfg.name,
        "dataset": cfg.dataset,
        "summary": summarize(reports),
        "runs": [r.to_dict() for r in reports],
        "config": config_to_dict(cfg),
        "git": _git_hash(),
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    return result


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
