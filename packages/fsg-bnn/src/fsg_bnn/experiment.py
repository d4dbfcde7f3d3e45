"""A paper-table run from an :class:`ExperimentConfig`: full-precision pretraining (or loading a
checkpoint), binarization, then binarized training with the configured method, as the official
``full_precision.py`` then ``meta-quantize.py`` (two-tiger/FSG @ 9559b30); and the evaluation of trained
weights. Both stages are checkpointed atomically under ``train.out_dir`` and resume with
``resume=True``; the trained weights are written as safetensors (``fp/model.safetensors``,
``model.safetensors``), training state as ``ckpt/ckpt-*.pt`` (read back with ``weights_only=True``).

Under ``torchrun`` / ``accelerate launch`` every process runs the same functions (ours): they join the
process group (:func:`papers_shared.distributed.init_distributed`, one GPU per process), train together
(:class:`~fsg_bnn.trainer.Trainer`), rank 0 writes every file (weights, checkpoints, ``result.json``) and
the others wait for it before reading; ``train.out_dir`` must be a folder every process sees (on several
nodes: a shared filesystem)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from fsg_bnn.config import ExperimentConfig
from fsg_bnn.convert import binarize
from fsg_bnn.data import make_loaders
from fsg_bnn.fsg import build_optimizer
from fsg_bnn.models import build_model, load_fp_checkpoint
from fsg_bnn.trainer import Trainer, pretrain_fp
from papers_shared import distributed as pd
from papers_shared.checkpoints import (
    CheckpointManager,
    atomic_write_text,
    load_checkpoint,
    load_safetensors,
    save_safetensors,
)
from papers_shared.config import config_to_dict
from papers_shared.device import seed_everything
from papers_shared.errors import CheckpointError

__all__ = ["build_experiment_model", "evaluate_checkpoint", "run_experiment", "run_pretrain"]


def build_experiment_model(cfg: ExperimentConfig) -> torch.nn.Module:
    m = cfg.model
    return build_model(m.arch, m.num_classes, m.in_features, m.hidden)


def _fp_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.out_dir).expanduser() / "fp" / "model.safetensors"


def run_pretrain(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> Path:
    """Full-precision pretraining; returns the path of the saved FP state dict (written by rank 0)."""
    t = cfg.train
    device = pd.init_distributed(t.device).device
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
        sync_bn=t.sync_bn,
    )
    path = _fp_path(cfg)
    if pd.is_main_process():
        meta = {"arch": cfg.model.arch, "stage": "full-precision"}
        save_safetensors(model.state_dict(), path, metadata=meta)
        atomic_write_text(path.with_name("history.json"), json.dumps(history, indent=2))
    pd.barrier()  # the weights are on disk before any process reads them
    return path


def run_experiment(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """FP weights (``train.pretrained``, a previous pretraining in ``out_dir``, or a new pretraining),
    then binarized training; writes ``out_dir/result.json`` (rank 0) and returns it (every process)."""
    t = cfg.train
    out = Path(t.out_dir).expanduser()
    device = pd.init_distributed(t.device).device
    fp = Path(t.pretrained).expanduser() if t.pretrained else _fp_path(cfg)
    if not fp.is_file():
        if t.pretrained:
            raise FileNotFoundError(f"train.pretrained={t.pretrained!r} does not exist")
        fp = run_pretrain(cfg, resume=resume, progress=progress)
    seed_everything(t.seed)
    model = build_experiment_model(cfg)
    try:
        load_fp_checkpoint(model, fp)
    except CheckpointError as exc:
        if t.pretrained:  # the user's file: say so and stop
            raise
        # our own pretraining output is damaged: rebuild it (ours)
        warnings.warn(f"{exc}; pretraining again", RuntimeWarning, stacklevel=2)
        fp = run_pretrain(cfg, resume=False, progress=progress)
        seed_everything(t.seed)
        model = build_experiment_model(cfg)
        load_fp_checkpoint(model, fp)
    binarize(model, cfg.model.quantizer, cfg.model.bits, bwn_scale=cfg.model.bwn_scale)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    train_loader, test_loader = make_loaders(cfg.data, cfg.model.num_classes, t.seed)
    trainer = Trainer(model, optimizer, device, t.lr_step, t.lr_gamma, t.min_lr, t.max_steps, t.sync_bn)
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
        "config": config_to_dict(cfg),
        "best_test_acc": max(accs) if accs else None,
        "last10_mean_test_acc": sum(accs[-10:]) / len(accs[-10:]) if accs else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "history": history,
    }
    if pd.is_main_process():
        save_safetensors(model.state_dict(), out / "model.safetensors", metadata={"config": cfg.name})
        atomic_write_text(out / "result.json", json.dumps(result, indent=2, default=str))
    pd.barrier()
    return result


def evaluate_checkpoint(cfg: ExperimentConfig, path: str | Path) -> dict[str, Any]:
    """Test accuracy of binarized weights: a ``model.safetensors`` or a training checkpoint
    ``ckpt/ckpt-*.pt`` of :func:`run_experiment`. A damaged, foreign or code-carrying file raises
    :class:`~papers_shared.errors.CheckpointError` naming it (nothing is unpickled). Under ``torchrun``
    each process evaluates its share of the test set."""
    path = Path(path)
    device = pd.init_distributed(cfg.train.device).device
    if path.suffix == ".safetensors":
        state, _ = load_safetensors(path)
    else:
        state = load_checkpoint(path, map_location="cpu")
        if isinstance(state, dict) and isinstance(state.get("trainer"), dict):
            state = state["trainer"].get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no model state dict; give a model.safetensors or ckpt-*.pt")
    model = binarize(
        build_experiment_model(cfg), cfg.model.quantizer, cfg.model.bits, bwn_scale=cfg.model.bwn_scale
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit {cfg.model.arch} ({first}); check --config") from None
    _, test_loader = make_loaders(cfg.data, cfg.model.num_classes, cfg.train.seed)
    trainer = Trainer(model.to(device), torch.optim.SGD(model.parameters(), lr=0.0), device)
    return {"config": cfg.name, "checkpoint": str(path), **trainer.evaluate(test_loader)}
