"""The training loops: base-session pre-training of the encoder and the session loop of every method.

* :func:`pretrain_encoder` trains encoder + ``Linear(h, K_tot)`` on the base classes (official
  ``pretrain.py``, commit b8a41c4: Adam, NLL on ``log_softmax``, validation every 10 epochs, the
  best-validation state kept, early stop once more than ``patience`` checks did not improve).
* :func:`pretrain_task` wraps it with a cache: one safetensors file per data/protocol/encoder/pretrain
  config and seed. A damaged cache file is rebuilt, with a warning naming it.
* :func:`run_method` drives one method through sessions ``0..T``: session graph (edges between seen-class
  nodes, official ``utils/split_data.py:get_incremental_adj_high``), ``fit_session``, evaluation of the
  joint test set and of each session group (accuracy matrix), an atomic checkpoint after every session
  and ``resume``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mecoin.config import ExperimentConfig, PretrainConfig
from mecoin.data import GFSCILTask
from mecoin.encoders import build_encoder
from mecoin.graph import SessionGraphs
from mecoin.session import GFSCILMethod, SessionContext, evaluate_session
from papers_shared.checkpoints import CheckpointManager, load_safetensors, save_safetensors
from papers_shared.config import ConfigError, config_to_dict
from papers_shared.device import get_device, seed_everything
from papers_shared.errors import CheckpointError
from papers_shared.metrics import AccuracyMatrix, RunReport

__all__ = [
    "PretrainResult",
    "pretrain_encoder",
    "pretrain_task",
    "resolve_device",
    "run_method",
    "session_graphs",
]


@dataclass
class PretrainResult:
    """Pre-trained encoder and its linear classifier ``Linear(h, K_tot)`` plus the log."""

    encoder: nn.Module
    classifier: nn.Linear
    best_val_acc: float
    best_epoch: int
    epochs_run: int


def resolve_device(name: str) -> torch.device:
    """``cfg.device`` as a torch device; an unavailable device is a :class:`ConfigError`."""
    try:
        return get_device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: {exc}; use device=cpu or device=auto") from None


def pretrain_encoder(
    encoder: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    edge_index: torch.Tensor,
    edge_weight: torch.Tensor | None,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    num_classes: int,
    cfg: PretrainConfig | None = None,
    progress: bool = False,
) -> PretrainResult:
    """Base-session pre-training: encoder + ``Linear(h, K_tot)``, NLL on ``log_softmax``, Adam, full
    batch on the base graph; validation every ``eval_every`` epochs, the best-validation state kept, stop
    once the no-improvement counter exceeds ``patience`` (official ``pretrain.py``).

    ``legacy_no_zero_grad`` reproduces the official loop's missing ``optimizer_classifier.zero_grad()``.
    """
    cfg = cfg or PretrainConfig()
    if train_idx.numel() == 0:
        raise ValueError("pre-training needs at least one training node")
    classifier = nn.Linear(encoder.out_dim, num_classes).to(x.device)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.Adam(classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = (-1.0, 0, copy.deepcopy(encoder.state_dict()), copy.deepcopy(classifier.state_dict()))
    tolerate, epoch = 0, -1
    bar = range(cfg.max_epochs)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="pretrain", leave=False)
    for epoch in bar:
        encoder.train()
        classifier.train()
        opt_enc.zero_grad()
        if not cfg.legacy_no_zero_grad:
            opt_cls.zero_grad()
        logits = classifier(encoder(x, edge_index, edge_weight)[train_idx])
        F.nll_loss(F.log_softmax(logits, dim=1), y[train_idx]).backward()
        opt_enc.step()
        opt_cls.step()
        if epoch > 0 and epoch % cfg.eval_every == 0 and val_idx.numel():
            encoder.eval()
            classifier.eval()
            with torch.no_grad():
                val_logits = classifier(encoder(x, edge_index, edge_weight)[val_idx])
            acc = float((val_logits.argmax(1) == y[val_idx]).float().mean())
            if acc > best[0]:
                best = (
                    acc,
                    epoch,
                    copy.deepcopy(encoder.state_dict()),
                    copy.deepcopy(classifier.state_dict()),
                )
                tolerate = 0
            else:
                tolerate += 1
                if tolerate > cfg.patience:
                    break
    if best[0] >= 0:
        encoder.load_state_dict(best[2])
        classifier.load_state_dict(best[3])
    encoder.eval()
    classifier.eval()
    return PretrainResult(encoder, classifier, max(best[0], 0.0), best[1], epoch + 1)


def session_graphs(task: GFSCILTask, cfg: ExperimentConfig) -> SessionGraphs:
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


def cache_path(cache_dir: str | Path, cfg: ExperimentConfig, seed: int) -> Path:
    """The pre-training cache file of ``cfg`` and ``seed`` under ``cache_dir``."""
    name = f"encoder-{cfg.dataset}-{cfg.encoder.backbone}-{_fingerprint(cfg, seed)}.safetensors"
    return Path(cache_dir) / name


def _load_cached(path: Path, encoder: nn.Module, classifier: nn.Linear, device) -> dict:
    """Fill ``encoder`` and ``classifier`` from a cache file; :class:`CheckpointError` if it is unusable."""
    tensors, meta = load_safetensors(path, device=str(device))
    try:
        log = json.loads(meta["log"])
        for prefix, module in (("encoder.", encoder), ("classifier.", classifier)):
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        return {k: log[k] for k in ("best_val_acc", "best_epoch", "epochs_run")}
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"pre-training cache {path} does not match this config ({msg})") from None


def pretrain_task(
    task: GFSCILTask,
    cfg: ExperimentConfig,
    seed: int,
    device: torch.device | None = None,
    cache_dir: str | Path | None = None,
    graphs: SessionGraphs | None = None,
) -> PretrainResult:
    """Pre-train the encoder on the base session, cached under ``cache_dir`` (safetensors, one file per
    data/protocol/encoder/pretrain config and seed). A damaged or foreign cache file is rebuilt, with a
    warning that names it, instead of failing on it forever."""
    device = device or resolve_device(cfg.device)
    graphs = graphs or session_graphs(task, cfg)
    data = task.data
    seed_everything(seed)
    encoder = build_encoder(cfg.encoder, data.x.shape[1]).to(device)
    path = cache_path(cache_dir, cfg, seed) if cache_dir is not None else None
    if path is not None and path.is_file():
        classifier = nn.Linear(encoder.out_dim, task.num_classes).to(device)
        try:
            log = _load_cached(path, encoder, classifier, device)
            return PretrainResult(encoder.eval(), classifier.eval(), **log)
        except CheckpointError as exc:
            warnings.warn(f"rebuilding the pre-training cache: {exc}", RuntimeWarning, stacklevel=2)
            seed_everything(seed)
            encoder = build_encoder(cfg.encoder, data.x.shape[1]).to(device)
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
        tensors = {f"encoder.{k}": v for k, v in res.encoder.state_dict().items()}
        tensors.update({f"classifier.{k}": v for k, v in res.classifier.state_dict().items()})
        save_safetensors(tensors, path, metadata={"log": json.dumps(log), "format": "mecoin-pretrain/1"})
    return res


def run_method(
    task: GFSCILTask,
    pretrained: PretrainResult,
    cfg: ExperimentConfig,
    method: GFSCILMethod,
    seed: int,
    device: torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> RunReport:
    """Sessions ``0..T`` of one method: per-session accuracy, accuracy matrix, timings, memory.

    With ``checkpoint_dir`` a checkpoint (``torch.save``, read back with ``weights_only=True``) is written
    after every session; ``resume`` continues from the newest one that loads.
    """
    device = device or resolve_device(cfg.device)
    task.to(device)
    graphs = session_graphs(task, cfg).to(device)
    seed_everything(seed)
    name = method.name
    T = len(task.split)

    def context(t: int) -> SessionContext:
        ei, ew = graphs.for_classes(task.split.seen_classes(t))
        return SessionContext(task, t, cfg.protocol, ei, ew, device, progress=cfg.progress)

    method.setup(context(0), pretrained)
    matrix = AccuracyMatrix(T)
    accs: list[float] = []
    logs: list[dict] = []
    start = 0
    mgr = CheckpointManager(checkpoint_dir, keep=1) if checkpoint_dir is not None else None
    if mgr is not None and resume:
        state = mgr.load_latest(map_location=device)
        if state is not None:
            method.load_state_dict(state["method"])
            accs, logs = list(state["accs"]), list(state["logs"])
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
        info = method.fit_session(ctx)
        fit_s = time.perf_counter() - t0
        res = evaluate_session(method, ctx)
        accs.append(res.accuracy)
        for s, a in enumerate(res.group_accuracies):
            matrix.set(t, s, a)
        logs.append({**{k: float(v) for k, v in info.items()}, "fit_seconds": fit_s})
        if mgr is not None and cfg.checkpoint_every_session:
            mgr.save(
                t, {"method": method.state_dict(), "accs": accs, "logs": logs, "matrix": matrix.tolist()}
            )
    extra = {
        "session_logs": logs,
        "memory_bytes": method.memory_bytes(),
        "pretrain": {"best_val_acc": pretrained.best_val_acc, "best_epoch": pretrained.best_epoch},
        "protocol": task.split.protocol,
        "classes": [list(s.classes) for s in task.split],
    }
    return RunReport(name, task.name, seed, accs, matrix.tolist(), config_to_dict(cfg), extra)
