"""Runs a paper table from an :class:`~g2g_fscil.config.ExperimentConfig` and writes its results.

* :func:`run_fscil`: one FSCIL run of one method (pre-train -> meta-train -> sessions -> evaluation);
  G2G, V2V (C-FSCIL modes 1-3), NCM and TEEN share the pre-trained backbone, the split and the evaluator
  (top-1 over all seen classes, one joint head), so the comparison is fair.
* :func:`run_table` (``g2g-fscil run``), :func:`run_ablation` (``ablate``), :func:`run_pretrain`,
  :func:`run_metatrain` and :func:`evaluate_checkpoint` (``eval``): the command-line entry points.
* :func:`joint_bound`: the upper bound printed beside the numbers (joint CE training on every class).

Model weights that users exchange (``model``, ``pretrain``, ``metatrain``) are safetensors files with
JSON metadata; training state goes through ``papers_shared.checkpoints.CheckpointManager``. Under
``torchrun`` every process trains (see :mod:`g2g_fscil.trainer`), evaluation is split by rank and
gathered, and rank 0 writes the files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import torch

from g2g_fscil.baselines.ncm import NCMClassifier
from g2g_fscil.baselines.v2v import method_config
from g2g_fscil.config import ExperimentConfig, G2GConfig
from g2g_fscil.data import FSCILData, gather, load_fscil_data
from g2g_fscil.graphs import collapse_index, cosine_adjacency, shared_energy
from g2g_fscil.memory import class_stats, merge_stats
from g2g_fscil.model import G2GNet
from g2g_fscil.trainer import incremental_session, metatrain, pretrain
from papers_shared import distributed as pd
from papers_shared.checkpoints import load_safetensors, save_safetensors
from papers_shared.config import config_to_dict, from_dict, save_config
from papers_shared.device import seed_everything
from papers_shared.errors import CheckpointError, ConfigError
from papers_shared.metrics import (
    AccuracyMatrix,
    RunReport,
    base_novel_accuracy,
    harmonic_mean,
    session_accuracy,
)
from papers_shared.results import write_json

__all__ = [
    "VARIANT_SPECS",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "joint_bound",
    "load_model",
    "pretrain_from_config",
    "read_model_file",
    "pretrained_state",
    "run_ablation",
    "run_fscil",
    "run_metatrain",
    "run_pretrain",
    "run_table",
    "save_model",
    "variant_config",
    "write_base_memory",
]

#: variant name -> (method, changes to the model config, C-FSCIL mode or None for ``cfg.v2v_mode``)
VARIANT_SPECS: dict[str, tuple[str, dict, int | None]] = {
    "ncm": ("ncm", {}, None),
    "teen": ("teen", {}, None),
    "v2v": ("v2v", {}, None),
    "v2v_mode1": ("v2v", {}, 1),
    "v2v_mode2": ("v2v", {}, 2),
    "v2v_mode3": ("v2v", {}, 3),
    "g2g": ("g2g", {}, None),
    "g2g_no_lgp": ("g2g", {"lgp": None}, None),
    "g2g_no_cag2g": ("g2g", {"cag2g": False}, None),
    "g2g_plain": ("g2g", {"lgp": None, "cag2g": False}, None),
    "g2g_lgp_preserve": ("g2g", {"lgp": "preserve"}, None),
    "g2g_lgp_image_centred": ("g2g", {"lgp": "image_centred"}, None),
    "g2g_anti_collapse": ("g2g", {"lgp": "anti_collapse"}, None),
    "g2g_node_only": ("g2g", {"alpha": 1.0}, None),
    "g2g_edge_only": ("g2g", {"alpha": 0.0}, None),
    "g2g_split": ("g2g", {"node_dim": "split"}, None),
}

MODEL_FORMAT = "g2g-fscil model"
_PRETRAINED = ("backbone.", "head.")
#: incremental-session and read-out fields: meta-training does not depend on them, so runs that differ
#: only here share one meta-training (e.g. V2V modes 1-3)
_SESSION_FIELDS = (
    "retrain_iter",
    "retrain_lr",
    "retrain_ca",
    "retrain_lgp",
    "nudging_iter",
    "nudging_lr",
    "nudging_act",
    "nudging_act_exp",
    "nudging_deviation",
    "bipolarize",
    "sharpen_eval",
    "teen_tau",
    "teen_weight",
    "ncm_temperature",
)


def _device(cfg: ExperimentConfig) -> torch.device:
    return pd.init_distributed(cfg.device).device


def pretrain_from_config(net: G2GNet, data: FSCILData, cfg: ExperimentConfig, seed: int, device, **kw):
    """:func:`~g2g_fscil.trainer.pretrain` with the config's epochs, learning rate, step and batch."""
    c = cfg
    return pretrain(
        net, data, c.pretrain_epochs, c.pretrain_lr, c.pretrain_step, c.pretrain_batch, device, seed, **kw
    )


def variant_config(cfg: ExperimentConfig, variant: str) -> tuple[str, ExperimentConfig]:
    """``(method, config)`` of an ablation variant (see :data:`VARIANT_SPECS`)."""
    if variant not in VARIANT_SPECS:
        raise ConfigError(f"unknown variant {variant!r}; valid: {list(VARIANT_SPECS)}")
    method, changes, mode = VARIANT_SPECS[variant]
    model = dataclasses.replace(cfg.model, **changes)
    return method, dataclasses.replace(cfg, model=model, v2v_mode=mode or cfg.v2v_mode)


def build_model(data: FSCILData, mcfg: G2GConfig) -> G2GNet:
    if mcfg.in_channels != data.in_channels:
        mcfg = dataclasses.replace(mcfg, in_channels=data.in_channels)
    return G2GNet(
        mcfg, num_classes=len(data.base_classes), image_size=data.image_size, input_norm=data.input_norm
    )


@torch.no_grad()
def _maps(model: G2GNet, ds, idx: torch.Tensor, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    out, ys = [], []
    for i in range(0, idx.numel(), batch):
        x, y = gather(ds, idx[i : i + batch])
        out.append(model.local_maps(x.to(device)))
        ys.append(y.to(device))
    return torch.cat(out), torch.cat(ys)


@torch.no_grad()
def write_base_memory(model: G2GNet, data: FSCILData, batch: int = 256, device="cpu") -> None:
    """Write the base classes from all their training images (eval transform, eval mode, streamed)."""
    c = model.config
    model.eval()
    model.memory.reset()
    idx = data.split[0].train_idx
    stats: dict = {}
    for i in range(0, idx.numel(), batch):
        x, y = gather(data.train_plain, idx[i : i + batch])
        maps = model.local_maps(x.to(device))
        stats = merge_stats(stats, class_stats(y.to(device), maps, model.proj, c.representation, c.edge_knn))
    model.memory.write_stats(stats, c.edge_proto, c.edge_knn, c.node_proto, c.representation)


@torch.no_grad()
def evaluate(model, data: FSCILData, t: int, batch: int = 256, device="cpu") -> dict:
    """Top-1 over the test images of every class seen up to session ``t`` (single joint head).

    Besides accuracies: the collapse index of the input graphs (mean off-diagonal ``A_ij``), of the
    backbone's local graphs, and the nodes' shared energy (:func:`g2g_fscil.graphs.shared_energy`). The
    test batches are split over the processes of a multi-process run and gathered back in order.
    """
    model.eval()
    idx = data.split.test_idx_seen(t)
    starts = list(range(0, idx.numel(), batch))
    rows = []
    graphs = isinstance(model, G2GNet) and model.num_nodes > 1
    for i in pd.shard(starts):
        x, y = gather(data.test, idx[i : i + batch])
        x = x.to(device)
        row = [model.predict(x).cpu(), y, None, None, None]
        if graphs:
            f = model.local_maps(x)
            _, z, a = model.embed(f)
            row[2:] = collapse_index(a), collapse_index(cosine_adjacency(f)), shared_energy(z)
        rows.append(row)
    rows = pd.gather_rows(rows, starts)
    pred, y = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    coll, bcoll, shared = ([r[i] for r in rows if r[i] is not None] for i in (2, 3, 4))
    acc = session_accuracy(pred, y)
    b, n = base_novel_accuracy(pred, y, data.base_classes)
    out = {"acc": acc, "base_acc": b, "novel_acc": n}
    groups = []  # accuracy on the test images of each session's classes (a row of the accuracy matrix)
    for s in list(data.split)[: t + 1]:
        mask = torch.isin(y, torch.as_tensor(s.classes, dtype=y.dtype))
        groups.append(float((pred[mask] == y[mask]).float().mean()) if mask.any() else float("nan"))
    out["groups"] = groups
    out["hm"] = harmonic_mean(b, n) if t > 0 else float("nan")
    out["collapse"] = sum(coll) / len(coll) if coll else float("nan")
    out["backbone_collapse"] = sum(bcoll) / len(bcoll) if bcoll else float("nan")
    out["shared_energy"] = sum(shared) / len(shared) if shared else float("nan")
    return out


def joint_bound(data: FSCILData, cfg: ExperimentConfig, seed: int = 0, device="cpu") -> float:
    """Upper bound (ours): backbone + linear head trained with cross-entropy on every class with all its
    training images (pre-training's epochs and learning rate); top-1 on the last session's test set."""
    seed_everything(seed)
    classes = list(data.split.class_order)
    mcfg = dataclasses.replace(cfg.model, seed=seed, in_channels=data.in_channels)
    net = G2GNet(mcfg, len(classes), image_size=data.image_size, input_norm=data.input_norm).to(device)
    all_idx = torch.nonzero(torch.isin(data.train_labels, torch.tensor(classes))).flatten()
    pretrain_from_config(net, data, cfg, seed, device, train_idx=all_idx, classes=classes)
    net.eval()
    idx = data.split.test_idx_seen(len(data.split) - 1)
    lut = torch.tensor(classes)
    preds, ys = [], []
    with torch.no_grad():
        for i in range(0, idx.numel(), cfg.eval_batch):
            x, y = gather(data.test, idx[i : i + cfg.eval_batch])
            preds.append(lut[net.pretrain_logits(x.to(device)).argmax(1).cpu()])
            ys.append(y)
    return session_accuracy(torch.cat(preds), torch.cat(ys))


def _meta_key(mcfg: G2GConfig) -> str:
    d = config_to_dict(mcfg)
    for k in _SESSION_FIELDS:
        d.pop(k)
    return json.dumps(d, sort_keys=True)


def run_fscil(
    data: FSCILData,
    cfg: ExperimentConfig,
    method: str | None = None,
    seed: int = 0,
    pretrained: dict | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    meta_cache: dict | None = None,
) -> tuple[RunReport, G2GNet]:
    """One full FSCIL run of ``method`` (g2g | v2v | ncm | teen); returns the report and the model.

    ``pretrained``: a state dict of a pre-trained :class:`G2GNet` shared across methods (fair comparison);
    otherwise stage 1 runs here (checkpointed under ``out_dir/pretrain``). ``meta_cache``: a dict in which
    meta-trained weights are kept and reused by runs whose meta-training is the same (V2V modes 1-3).
    """
    method = method or cfg.method
    device = _device(cfg)
    gen = seed_everything(seed)
    mcfg = method_config(dataclasses.replace(cfg.model, seed=seed), method, cfg.v2v_mode)
    model = build_model(data, mcfg).to(device)
    out = Path(out_dir) if out_dir else None
    extra: dict = {}
    if pretrained is not None:  # stage 1 trains the backbone and the head; g_phi starts from its init
        model.load_state_dict(
            {k: v for k, v in pretrained.items() if k.startswith(_PRETRAINED)}, strict=False
        )
    else:
        ckpt = {"ckpt_dir": out / "pretrain" if out else None, "resume": resume, "progress": progress}
        extra["pretrain_loss"] = pretrain_from_config(
            model, data, cfg, seed, device, num_workers=cfg.num_workers, **ckpt
        )
    sessions = []
    if method in ("ncm", "teen"):
        clf = NCMClassifier(model, teen=(method == "teen"), tau=mcfg.teen_tau, weight=mcfg.teen_weight)
        for t, s in enumerate(data.split):
            maps, ys = _maps(model.eval(), data.train_plain, s.train_idx, cfg.eval_batch, device)
            clf.write(ys, maps, calibrate=t > 0)
            sessions.append(evaluate(clf, data, t, cfg.eval_batch, device))
    else:
        key = _meta_key(mcfg)
        if meta_cache is not None and key in meta_cache:
            model.load_state_dict(meta_cache[key]["state"], strict=False)
            extra["meta"] = meta_cache[key]["hist"]
        else:
            extra["meta"] = metatrain(
                model,
                data,
                None,
                device,
                gen,
                out / f"meta_{method}" if out else None,
                cfg.ckpt_every,
                resume,
                progress,
            )
            if meta_cache is not None:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                meta_cache[key] = {"state": state, "hist": extra["meta"]}
        write_base_memory(model, data, cfg.eval_batch, device)
        frozen = copy.deepcopy(model.backbone.state_dict())
        sessions.append(evaluate(model, data, 0, cfg.eval_batch, device))
        for s in list(data.split)[1:]:
            incremental_session(model, data, s, device, gen, cfg.eval_batch)
            sessions.append(evaluate(model, data, s.index, cfg.eval_batch, device))
        extra["backbone_unchanged"] = all(
            torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen.items()
        )
    matrix = AccuracyMatrix(len(sessions))
    for t, r in enumerate(sessions):
        for g, v in enumerate(r["groups"]):
            matrix.set(t, g, v)
    for k in ("base_acc", "novel_acc", "hm", "collapse", "backbone_collapse", "shared_energy"):
        extra[k] = [r[k] for r in sessions]
    accs = [r["acc"] for r in sessions]
    config = config_to_dict(mcfg)
    report = RunReport(method, data.name, seed, accs, acc_matrix=matrix.tolist(), config=config, extra=extra)
    return report, model


# ------------------------------------------------------------------------------------------ weight files
def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in pd.unwrap(model).state_dict().items()}


def save_model(model: G2GNet, path: str | Path, method: str, cfg: ExperimentConfig, **extra) -> Path:
    """A model's weights and explicit memory as safetensors, with method and config as JSON metadata."""
    meta = {"format": MODEL_FORMAT, "method": method, "config": json.dumps(config_to_dict(cfg))}
    meta.update({k: json.dumps(v) for k, v in extra.items()})
    return save_safetensors(_state(model), path, metadata=meta)


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str, ExperimentConfig]:
    """``(tensors, method, config)`` of a file written by :func:`save_model`; a damaged file, or one
    that is not ours, is a :class:`CheckpointError` naming it."""
    tensors, meta = load_safetensors(path)
    if meta.get("format") != MODEL_FORMAT or "config" not in meta:
        raise CheckpointError(f"{path} is not a g2g-fscil model file (written by `g2g-fscil run`)")
    try:
        cfg = from_dict(ExperimentConfig, json.loads(meta["config"]))
    except (ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: its stored config is invalid ({exc})") from None
    method = meta.get("method", cfg.method)
    if method not in ("g2g", "v2v"):
        raise CheckpointError(
            f"{path} holds method {method!r}; eval reads G2G/V2V models (NCM/TEEN keep no weights)"
        )
    return tensors, method, cfg


def load_model(path: str | Path, data: FSCILData) -> tuple[G2GNet, str, ExperimentConfig]:
    """Rebuild a model saved by :func:`save_model`: ``(model, method, its config)``; tensors that do not
    fit the stored config are a :class:`CheckpointError`."""
    tensors, method, cfg = read_model_file(path)
    model = build_model(data, method_config(cfg.model, method, cfg.v2v_mode))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit the model of its config ({first})") from None
    return model, method, cfg


def pretrained_state(
    cfg: ExperimentConfig, data: FSCILData, seed: int, out: Path, resume: bool, progress: bool
) -> dict[str, torch.Tensor]:
    """Stage 1 weights of ``seed``, cached in ``out/pretrain.safetensors`` (reused with ``resume``; a
    damaged cache is pre-trained again, with a warning)."""
    path = out / "pretrain.safetensors"
    if resume and path.is_file():
        try:
            return load_safetensors(path)[0]
        except CheckpointError as exc:
            warnings.warn(f"{exc}; pre-training again", RuntimeWarning, stacklevel=2)
    device = _device(cfg)
    seed_everything(seed)
    net = build_model(data, dataclasses.replace(cfg.model, seed=seed)).to(device)
    ckpt = {"ckpt_dir": out / "ckpt_pretrain", "resume": resume, "progress": progress}
    losses = pretrain_from_config(net, data, cfg, seed, device, num_workers=cfg.num_workers, **ckpt)
    state = _state(net)
    if pd.is_main_process():
        save_safetensors(state, path, metadata={"format": "g2g-fscil pretrain", "losses": json.dumps(losses)})
    return state


def _pretrain_dir(cfg: ExperimentConfig, seed: int) -> Path:
    """One pre-training per seed and run name, shared by every method and variant (with ``resume``)."""
    return Path(cfg.out_dir) / cfg.name / "pretrain" / f"seed{seed}"


def _summary(report: RunReport) -> dict:
    return {
        "method": report.method,
        "seed": report.seed,
        "accs": report.accs,
        "avg": report.avg,
        "pd": report.pd,
    }


def _write(obj, path: Path) -> None:
    if pd.is_main_process():
        write_json(obj, path)


# -------------------------------------------------------------------------------------- command entries
def run_table(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> list[dict]:
    """``g2g-fscil run``: per seed pre-train (``out_dir/<name>/pretrain/seed<k>/``, reused by every method
    with ``resume``), run ``cfg.method``, write ``results.json`` and ``model.safetensors`` under
    ``out_dir/<name>/<method>/seed<k>/``."""
    data = load_fscil_data(cfg)
    root = Path(cfg.out_dir) / cfg.name / cfg.method
    if pd.is_main_process():
        save_config(cfg, root / "config.yaml")
    rows = []
    for seed in cfg.seeds:
        out = root / f"seed{seed}"
        state = pretrained_state(cfg, data, seed, _pretrain_dir(cfg, seed), resume, progress)
        rep, model = run_fscil(data, cfg, cfg.method, seed, state, out, resume, progress)
        _write(rep.to_dict(), out / "results.json")
        if pd.is_main_process() and cfg.method in ("g2g", "v2v"):
            save_model(model, out / "model.safetensors", cfg.method, cfg)
        rows.append(_summary(rep))
    return rows


def run_pretrain(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> list[str]:
    """``g2g-fscil pretrain``: stage 1 only; ``pretrain.safetensors`` per seed."""
    data = load_fscil_data(cfg)
    paths = []
    for seed in cfg.seeds:
        out = _pretrain_dir(cfg, seed)
        pretrained_state(cfg, data, seed, out, resume, progress)
        paths.append(str(out / "pretrain.safetensors"))
    return paths


def run_metatrain(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> list[dict]:
    """``g2g-fscil metatrain``: stages 1-2 for ``cfg.method`` (g2g or v2v); ``metatrain.safetensors``."""
    if cfg.method not in ("g2g", "v2v"):
        raise ConfigError(f"metatrain needs a memory method (method=g2g or v2v), got {cfg.method!r}")
    data = load_fscil_data(cfg)
    device = _device(cfg)
    rows = []
    for seed in cfg.seeds:
        out = Path(cfg.out_dir) / cfg.name / cfg.method / f"seed{seed}"
        state = pretrained_state(cfg, data, seed, _pretrain_dir(cfg, seed), resume, progress)
        gen = seed_everything(seed)
        mcfg = method_config(dataclasses.replace(cfg.model, seed=seed), cfg.method, cfg.v2v_mode)
        model = build_model(data, mcfg).to(device)
        model.load_state_dict(state, strict=False)
        hist = metatrain(
            model, data, None, device, gen, out / f"meta_{cfg.method}", cfg.ckpt_every, resume, progress
        )
        if pd.is_main_process():
            save_model(model, out / "metatrain.safetensors", cfg.method, cfg, final_loss=hist["loss"][-1:])
        rows.append(
            {"seed": seed, "file": str(out / "metatrain.safetensors"), "final_loss": hist["loss"][-1:]}
        )
    return rows


def run_ablation(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> dict[str, list[dict]]:
    """``g2g-fscil ablate``: every variant of ``cfg.variants`` on one shared pre-training per seed;
    ``results.json`` under ``out_dir/<name>/ablation/``."""
    data = load_fscil_data(cfg)
    root = Path(cfg.out_dir) / cfg.name / "ablation"
    results: dict[str, list[dict]] = {}
    for seed in cfg.seeds:
        out = root / f"seed{seed}"
        state = pretrained_state(cfg, data, seed, _pretrain_dir(cfg, seed), resume, progress)
        cache: dict = {}
        for v in cfg.variants:
            method, vcfg = variant_config(cfg, v)
            rep, _ = run_fscil(data, vcfg, method, seed, state, out / v, resume, progress, cache)
            results.setdefault(v, []).append(rep.to_dict())
    _write(results, root / "results.json")
    return {v: [{k: r[k] for k in ("seed", "avg", "pd", "accs")} for r in rs] for v, rs in results.items()}


def evaluate_checkpoint(cfg: ExperimentConfig, path: str | Path) -> dict:
    """``g2g-fscil eval``: the saved model on every session its memory covers (the data of ``cfg``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path} (write one with `g2g-fscil run`)")
    read_model_file(path)  # refuse a damaged or foreign file before loading any data
    data = load_fscil_data(cfg)
    model, method, _ = load_model(path, data)
    device = _device(cfg)
    model.to(device)
    stored = set(model.memory.class_ids.tolist())
    accs = []
    for s in data.split:
        if not set(s.classes) <= stored:
            break
        accs.append(evaluate(model, data, s.index, cfg.eval_batch, device)["acc"])
    return {"method": method, "sessions": len(accs), "accs": accs}
