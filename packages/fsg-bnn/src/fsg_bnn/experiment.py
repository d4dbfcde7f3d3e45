"""A whole run from an :class:`ExperimentConfig`: full-precision pretraining (or loading a checkpoint),
binarization, then binarized training with the configured method (spec §3.8, §5). Both stages are
checkpointed atomically under ``train.out_dir`` and resume with ``resume=True``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fsg_bnn.config import ExperimentConfig
from fsg_bnn.convert import binarize
from fsg_bnn.data import make_loaders
from fsg_bnn.models import build_model, load_fp_checkpoint
from fsg_bnn.optim import build_optimizer
from fsg_bnn.trainer import Trainer, pretrain_fp
from papers_shared.checkpoints import CheckpointManager, atomic_save, atomic_write_text
from papers_shared.device import get_device, seed_everything

__all__ = ["build_experiment_model", "run_experiment", "run_pretrain"]


def build_experiment_model(cfg: ExperimentConfig) -> torch.nn.Module:
    m = cfg.model
    return build_model(m.arch, m.num_classes, m.in_features, m.hidden)


def _fp_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.out_dir).expanduser() / "fp" / "model.pt"


def run_pretrain(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> Path:
    """Full-precision pretraining; returns the path of the saved FP state dict."""
    t = cfg.train
    device = get_device(t.device)
    seed_everything(t.seed)
    model = build_experiment_model(cfg).to(device)
    train_loader, test_loader = make_loaders(cfg.data, cfg.model.num_classes, t.seed)
    ckpt = CheckpointManager(Path(t.out_dir).expanduser() / "fp" / "ckpt", keep=t.keep_checkpoints)
    history = pretrain_fp(
        model,
        train_loader,
        t.pretrain_epochs,
        t.pretrain_lr,
        t.pretrain_optimizer,
        t.pretrain_weight_decay,
        t.pretrain_lr_step,
        device,
        test_loader,
        ckpt,
        resume=resume,
        progress=progress,
    )
    path = _fp_path(cfg)
    atomic_save(model.state_dict(), path)
    atomic_write_text(path.with_name("history.json"), json.dumps(history, indent=2))
    return path


def run_experiment(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """FP weights (``train.pretrained``, a previous pretraining in ``out_dir``, or a new pretraining),
    then binarized training; writes ``out_dir/result.json`` and returns it."""
    t = cfg.train
    out = Path(t.out_dir).expanduser()
    device = get_device(t.device)
    fp = Path(t.pretrained).expanduser() if t.pretrained else _fp_path(cfg)
    if not fp.is_file():
        if t.pretrained:
            raise FileNotFoundError(f"train.pretrained={t.pretrained!r} does not exist")
        fp = run_pretrain(cfg, resume=resume, progress=progress)
    seed_everything(t.seed)
    model = build_experiment_model(cfg)
    load_fp_checkpoint(model, fp)
    binarize(model, cfg.model.quantizer, cfg.model.bits, bwn_scale=cfg.model.bwn_scale)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    train_loader, test_loader = make_loaders(cfg.data, cfg.model.num_classes, t.seed)
    trainer = Trainer(model, optimizer, device, t.lr_step, t.lr_gamma, t.min_lr, t.max_steps)
    ckpt = CheckpointManager(out / "ckpt", keep=t.keep_checkpoints)
    history = trainer.fit(
        train_loader,
        t.epochs,
        test_loader,
        ckpt,
        resume=resume,
        checkpoint_every=t.checkpoint_every,
        eval_every=t.eval_every,
        progress=progress,
    )
    accs = [h["test_acc"] for h in history if "test_acc" in h]
    result = {
        "config": asdict(cfg),
        "best_test_acc": max(accs) if accs else None,
        "last10_mean_test_acc": sum(accs[-10:]) / len(accs[-10:]) if accs else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "history": history,
    }
    atomic_write_text(out / "result.json", json.dumps(result, indent=2, default=str))
    return result
