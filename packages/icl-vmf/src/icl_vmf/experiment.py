"""One experiment = every configured method on the same stream and encoder, once per seed."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icl_vmf.baselines import build_learner
from icl_vmf.data import StreamData, build_stream
from icl_vmf.encoders import ViTEncoder, build_vit, pretrain_encoder
from icl_vmf.system2 import OracleSystem2, System2, build_system2
from icl_vmf.trainer import StreamResult, run_stream
from papers_shared.device import get_device, seed_everything

__all__ = ["num_threads", "prepare_encoder", "run_experiment", "summarize"]


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


def prepare_encoder(cfg, data: StreamData, seed: int, device: torch.device) -> ViTEncoder:
    """The frozen ViT of a run: a checkpoint, or a model from ``system1.vit_config`` that is pre-trained on
    the stream's disjoint pre-training split when it has one (digits, spec §8)."""
    s1 = cfg.system1
    enc = build_vit(
        None if s1.vit_config is not None else s1.vit,
        config=s1.vit_config,
        normalize_mean=s1.normalize_mean,
        normalize_std=s1.normalize_std,
        image_size=s1.image_size,
        seed=seed,
    ).to(device)
    if s1.vit_config is not None and data.pretrain is not None and cfg.data.pretrain_epochs > 0:
        pretrain_encoder(
            enc,
            *data.pretrain,
            epochs=cfg.data.pretrain_epochs,
            lr=cfg.data.pretrain_lr,
            batch_size=cfg.data.pretrain_batch_size,
            seed=seed,
        )
    return enc


def summarize(results: list[StreamResult]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of the headline numbers, per method."""
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
        row["average_per_task"] = np.mean([r.average_per_task for r in rs], axis=0).tolist()
        out[method] = row
    return out


def run_experiment(
    cfg,
    out_dir: str | Path | None = None,
    resume: bool = False,
    system2: System2 | None = None,
    data: StreamData | None = None,
) -> dict[str, Any]:
    """Run ``cfg.methods`` x ``cfg.seeds``; System2 (``cfg.system2.enabled`` or given) joins ICL's final
    evaluation. Writes ``results.json`` (and per-run checkpoints) under ``out_dir`` when given."""
    from papers_shared.checkpoints import atomic_write_text
    from papers_shared.config import config_to_dict
    from papers_shared.results import to_jsonable

    device = get_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    results: list[StreamResult] = []
    with num_threads(cfg.train.num_threads):
        data = data if data is not None else build_stream(cfg.data)
        if system2 is None and cfg.system2.enabled:
            system2 = build_system2(cfg.system2, device, data.class_names)
        for seed in cfg.seeds:
            seed_everything(seed)
            encoder = prepare_encoder(cfg, data, seed, device)
            for method in cfg.methods:
                if isinstance(system2, OracleSystem2):
                    system2.generator.manual_seed(seed)
                learner = build_learner(method, cfg, data, encoder, device, seed)
                ckpt = (
                    out / "checkpoints" / f"{method}-seed{seed}"
                    if (out is not None and cfg.checkpoint)
                    else None
                )
                res = run_stream(learner, data, cfg, seed, system2 if method == "icl" else None, ckpt, resume)
                results.append(res)
                if out is not None:
                    atomic_write_text(
                        out / "runs" / f"{method}-seed{seed}.json",
                        json.dumps(to_jsonable(res.to_dict()), indent=2),
                    )
    report = {
        "name": cfg.name,
        "dataset": data.name,
        "device": str(device),
        "summary": summarize(results),
        "runs": [r.to_dict() for r in results],
        "config": config_to_dict(cfg),
    }
    if out is not None:
        atomic_write_text(out / "results.json", json.dumps(to_jsonable(report), indent=2) + "\n")
    return report
