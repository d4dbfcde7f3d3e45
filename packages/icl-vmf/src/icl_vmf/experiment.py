"""Runs a paper table from a config and writes its results.

* :func:`run_experiment`: every configured method on the same stream and encoder, once per seed
  (``results.json``, one JSON per run, per-task training checkpoints and the trained weights as
  safetensors under ``weights/``); runs unchanged under ``torchrun`` (rank 0 writes).
* :func:`evaluate_checkpoint`: re-evaluates trained weights (a ``weights/*.safetensors`` file, a training
  checkpoint file or a checkpoint folder), e.g. with a System2 that was off during training.
* :func:`zero_shot`: the "System2 alone" reference over all class names.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icl_vmf.config import METHODS
from icl_vmf.data import StreamData, build_stream
from icl_vmf.encoders import prepare_encoder
from icl_vmf.evaluation import StreamResult, evaluate
from icl_vmf.learner import Learner, build_learner
from icl_vmf.system2 import OracleSystem2, System2, build_system2
from icl_vmf.trainer import run_stream
from papers_shared import distributed as dist
from papers_shared.checkpoints import CheckpointManager, load_checkpoint, load_safetensors, save_safetensors
from papers_shared.device import seed_everything
from papers_shared.errors import CheckpointError, ConfigError
from papers_shared.pools import stop_pool
from papers_shared.results import write_json

__all__ = [
    "evaluate_checkpoint",
    "format_summary",
    "load_trained",
    "num_threads",
    "run_experiment",
    "summarize",
    "zero_shot",
]


@contextlib.contextmanager
def num_threads(n: int):
    """Temporarily set torch's intra-op threads (``n <= 0``: unchanged)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def summarize(results: list[StreamResult]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of the headline numbers, per method (per-seed values kept)."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == method]
        row: dict[str, Any] = {"seeds": [r.seed for r in rs]}
        metrics = {
            "final_class_il": [r.final_average for r in rs],
            "final_task_il": [r.final_average_task_il for r in rs],
            "forgetting": [r.forgetting for r in rs],
            "bwt": [r.bwt for r in rs],
            "train_seconds": [r.train_seconds for r in rs],
        }
        if all(r.final_average_with_system2 is not None for r in rs):
            metrics["final_class_il_with_system2"] = [r.final_average_with_system2 for r in rs]
        for k, v in metrics.items():
            row[k] = float(np.mean(v))
            row[f"{k}_std"] = float(np.std(v))
            row[f"{k}_per_seed"] = [float(x) for x in v]
        row["average_per_task"] = np.mean([r.average_per_task for r in rs], axis=0).tolist()
        out[method] = row
    return out


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a text table (percent)."""
    lines = [f"{'method':<18}{'class-IL':>10}{'task-IL':>10}{'+System2':>10}{'forget':>9}"]
    for m, r in summary.items():
        s2 = r.get("final_class_il_with_system2")
        s2 = f"{100 * s2:10.2f}" if s2 is not None else f"{'-':>10}"
        lines.append(
            f"{m:<18}{100 * r['final_class_il']:10.2f}{100 * r['final_task_il']:10.2f}{s2}"
            f"{100 * r['forgetting']:9.2f}"
        )
    return "\n".join(lines)


def _encoder_key(cfg, seed: int) -> int | None:
    """Runs with the same key share one frozen encoder: a checkpoint is the same for every seed; the
    digits demo pre-trains one per ``data.pretrain_seed`` (or per run seed when that is null)."""
    if cfg.system1.vit_config is None:
        return None
    return cfg.data.pretrain_seed if cfg.data.pretrain_seed is not None else seed


def _train_one(cfg, data, encoder, seed, method, device, system2, ckpt, resume, progress):
    """One (seed, method) run: ``(StreamResult, tensors, metadata)`` of its trained weights."""
    seed_everything(seed)
    if isinstance(system2, OracleSystem2):
        system2.generator.manual_seed(seed)
    learner = build_learner(method, cfg, data, encoder, device, seed)
    res = run_stream(
        learner, data, cfg, seed, system2 if cfg.is_icl(method) else None, ckpt, resume, progress
    )
    tensors, meta = learner.export_weights(
        seed=seed, dataset=data.name, num_classes=data.num_classes, num_tasks=data.num_tasks, config=cfg.name
    )
    return res, {k: v.detach().cpu() for k, v in tensors.items()}, meta


def _worker(cfg, data, encoder, seed, method, threads, deterministic, ckpt, resume):
    """A run in a worker process (``parallel_runs``): same thread count and determinism as the caller."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    system2 = build_system2(cfg.system2, "cpu", data.class_names) if cfg.system2.enabled else None
    return _train_one(cfg, data, encoder, seed, method, torch.device("cpu"), system2, ckpt, resume, False)


def run_experiment(
    cfg,
    out_dir: str | Path | None = None,
    resume: bool = False,
    system2: System2 | None = None,
    data: StreamData | None = None,
    progress: bool = True,
    encoders: dict | None = None,
) -> dict[str, Any]:
    """Run ``cfg.methods`` x ``cfg.seeds``; System2 (``cfg.system2.enabled`` or given) joins the final
    evaluation of ICL and its variants. Writes ``config.yaml``, ``results.json``, ``runs/<method>-seed<seed>.json``,
    ``weights/<method>-seed<seed>.safetensors`` and (``cfg.checkpoint``) per-task checkpoints under
    ``out_dir`` when given. Joins the process group when launched by ``torchrun``/``accelerate``.

    ``encoders`` caches the frozen encoders by :func:`_encoder_key` (filled as they are built). With
    ``parallel_runs > 1`` on CPU in one process, the runs go to that many worker processes (a given System2
    object is not shared with them; they build theirs from the config)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from papers_shared.config import config_to_dict, save_config

    info = dist.init_distributed(cfg.device)
    device = info.device
    out = Path(out_dir) if out_dir is not None else None
    write = out is not None and dist.is_main_process()
    encoders = {} if encoders is None else encoders
    jobs = [(seed, method) for seed in cfg.seeds for method in cfg.methods]
    done: dict[tuple[int, str], tuple] = {}

    def finish(seed: int, method: str, result: tuple) -> None:
        done[seed, method] = result
        if write:
            res, tensors, meta = result
            write_json(res.to_dict(), out / "runs" / f"{method}-seed{seed}.json")
            save_safetensors(tensors, out / "weights" / f"{method}-seed{seed}.safetensors", meta)

    def ckpt(seed: int, method: str) -> Path | None:
        return out / "checkpoints" / f"{method}-seed{seed}" if out is not None and cfg.checkpoint else None

    with num_threads(cfg.train.num_threads):
        data = data if data is not None else build_stream(cfg.data)
        if write:
            save_config(cfg, out / "config.yaml")
        for seed in cfg.seeds:
            key = _encoder_key(cfg, seed)
            if key not in encoders:
                encoders[key] = prepare_encoder(cfg, data, seed if key is None else key, device)
        parallel = cfg.parallel_runs > 1 and info.world_size == 1 and device.type == "cpu"
        if parallel:
            order = sorted(jobs, key=lambda j: not cfg.is_icl(j[1]))  # the longest runs first
            pool = ProcessPoolExecutor(cfg.parallel_runs, mp_context=get_context("spawn"))
            try:
                futures = {
                    job: pool.submit(
                        _worker,
                        cfg,
                        data,
                        encoders[_encoder_key(cfg, job[0])],
                        *job,
                        torch.get_num_threads(),
                        torch.are_deterministic_algorithms_enabled(),
                        ckpt(*job),
                        resume,
                    )  # fmt: skip
                    for job in order
                }
                for job in order:
                    finish(*job, futures[job].result())
            except BaseException:
                stop_pool(pool)
                raise
            pool.shutdown()
        else:
            if system2 is None and cfg.system2.enabled:
                system2 = build_system2(cfg.system2, device, data.class_names)
            for seed, method in jobs:
                encoder = encoders[_encoder_key(cfg, seed)]
                result = _train_one(
                    cfg, data, encoder, seed, method, device, system2, ckpt(seed, method), resume, progress
                )
                finish(seed, method, result)
    results = [done[job][0] for job in jobs]
    report = {
        "name": cfg.name,
        "dataset": data.name,
        "device": str(device),
        "world_size": info.world_size,
        "summary": summarize(results),
        "runs": [r.to_dict() for r in results],
        "config": config_to_dict(cfg),
    }
    if write:
        write_json(report, out / "results.json")
    return report


def _read_trained(path: Path) -> tuple[str, Any, dict[str, str] | None]:
    """``("weights", tensors, metadata)`` for a safetensors file, else ``("state", state, None)`` for a
    training checkpoint file or folder (newest loadable checkpoint). Never unpickles code."""
    if path.is_dir():
        state = CheckpointManager(path).load_latest(map_location="cpu", restore_rng=False)
        if state is None:
            raise FileNotFoundError(f"no checkpoint (ckpt-*.pt) in {path}")
        return "state", state, None
    if path.suffix == ".safetensors":
        tensors, meta = load_safetensors(path)
        return "weights", tensors, meta
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or "learner" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not an icl-vmf training checkpoint (no learner state)")
    return "state", state, None


def load_trained(
    cfg, path: str | Path, method: str | None = None, data: StreamData | None = None, encoder=None
) -> tuple[Learner, StreamData, int]:
    """``(learner, data, last_task)`` from trained weights or a training checkpoint at ``path``.

    ``method`` defaults to the one recorded in a weights file, else ``"icl"``; the frozen encoder is
    ``encoder`` or rebuilt from the config (the digits demo re-runs its seeded pre-training)."""
    path = Path(path)
    kind, payload, meta = _read_trained(path)  # read (and refuse) the file before any work
    seed = cfg.seeds[0]
    if kind == "weights":
        try:
            method = method or json.loads(meta.get("method", '"icl"'))
            seed = int(json.loads(meta.get("seed", str(seed))))
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: its metadata is not JSON; not an icl-vmf weights file") from None
    method = method or "icl"
    known = (*METHODS, *cfg.icl_variants)
    if method not in known:
        raise ConfigError(
            f"--method {method!r} is not one of {list(known)} (icl_variants come from the config)"
        )
    info = dist.init_distributed(cfg.device)
    data = data if data is not None else build_stream(cfg.data)
    if encoder is None:
        key = _encoder_key(cfg, seed)
        encoder = prepare_encoder(cfg, data, seed if key is None else key, info.device)
    learner = build_learner(method, cfg, data, encoder, info.device, seed)
    if kind == "weights":
        learner.import_weights(payload, meta, str(path))
        upto = learner.seen_classes // data.classes_per_task - 1
    else:
        learner.load_full_state(payload["learner"], source=str(path))
        upto = int(payload["step"])
    if upto < 0:
        raise CheckpointError(f"{path} holds a learner that finished no task yet")
    return learner, data, upto


def evaluate_checkpoint(cfg, path: str | Path, method: str | None = None) -> dict[str, Any]:
    """Class-IL / task-IL per task of trained weights, and with ``cfg.system2.enabled`` after System2."""
    with num_threads(cfg.train.num_threads):
        learner, data, upto = load_trained(cfg, path, method)
        system2 = (
            build_system2(cfg.system2, learner.device, data.class_names) if cfg.system2.enabled else None
        )
        cil, til, stats, final = evaluate(learner, data, upto, cfg, system2)
    return {
        "method": learner.name,
        "after_task": upto,
        "class_il": cil,
        "task_il": til,
        "final_class_il": float(np.mean(cil)),
        "class_il_with_system2": final,
        "interaction": stats.as_dict(),
    }


def zero_shot(cfg, max_per_task: int = 0) -> dict[str, float]:
    """System2 alone over all class names of the configured stream (``max_per_task`` caps test images)."""
    from icl_vmf.baselines import system2_zero_shot
    from papers_shared.device import get_device

    data = build_stream(cfg.data)
    system2 = build_system2(cfg.system2, get_device(cfg.device), data.class_names)
    return system2_zero_shot(system2, data, cfg.system2.batch_size, max_per_task)
