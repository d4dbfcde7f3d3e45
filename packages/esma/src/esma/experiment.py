"""The paper tables, driven by :class:`~esma.config.EsmaExperimentConfig`: screening -> stage 1 -> stage 2
-> 10-target sub-source evaluation, the TTP baseline on the same data, and the "+ES" iterative study.

Each public function is one ``esma`` command: it builds what it needs from the config, writes its files
under ``cfg.run_dir`` and returns a JSON-able summary. All of them run in one process or under
``torchrun --nproc-per-node N`` / ``accelerate launch`` (ours): training is DDP (see
:mod:`esma.trainer`), screening and stage 1 run on rank 0 (the others wait and read its files), and the
evaluations shard their (attack, target) work items by rank and gather the rows, so the table equals the
one-process table. ``dataset="imagenet"`` uses the real ImageNet folders and public torchvision/timm
weights (never downloaded: missing weights raise ``FileNotFoundError`` naming the cache to fill);
``dataset="digits"`` runs the same code on sklearn digits with tiny CNNs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from papers_shared import distributed as dist
from papers_shared.attacks import load_model, mean_over_targets, tiny_cnn, tiny_mlp, transfer_matrix
from papers_shared.checkpoints import atomic_write_text, load_safetensors, save_safetensors
from papers_shared.device import seed_everything
from papers_shared.errors import CheckpointError

from .analysis import anchor_ablation
from .attack import EsmaAttack
from .baselines.ttp import TTPAttack, TTPGenerator, TTPTrainer, load_ttp_checkpoint
from .config import EsmaExperimentConfig
from .data import class_images, digits_split, screening_data, train_data, train_digits_classifier, val_data
from .generator import EsmaGenerator, load_generator, save_generator
from .screening import EasySampleBank, class_mean_logits, screen_banks
from .trainer import EsmaTrainer, pretrain_target_embeddings

__all__ = [
    "build_generator",
    "es_iterative",
    "parse_ttp",
    "pretrain",
    "screen",
    "train",
    "ttp_train",
    "build_source",
    "build_victims",
    "evaluate",
    "load_or_screen",
    "run_es_iterative",
    "run_eval",
    "run_pretrain",
    "run_screen",
    "run_train",
    "run_ttp_train",
]

CSV_COLUMNS = ["source", "victim", "target", "success", "attack", "protocol", "eps", "n", "successes", "white_box",
               "source_weights", "victim_weights", "source_preprocessing", "victim_preprocessing"]  # fmt: skip


def _setup(cfg: EsmaExperimentConfig) -> torch.device:
    """Join the process group a launcher described (no-op alone), seed, return this process's device."""
    info = dist.init_distributed(cfg.device)
    seed_everything(cfg.seed)
    return info.device


def _run_dir(cfg: EsmaExperimentConfig) -> Path:
    return Path(cfg.run_dir)


# ------------------------------------------------------------------------------------------- models
def _digits_model(cfg: EsmaExperimentConfig, kind: str, seed: int) -> nn.Module:
    """Tiny digits classifier, trained once and cached under the run folder (rebuilt if damaged)."""
    s = cfg.digits_size
    build = {
        "tiny_cnn": lambda: tiny_cnn(10, 3, width=16, seed=seed),
        "tiny_cnn_wide": lambda: tiny_cnn(10, 3, width=24, seed=seed),
        "tiny_mlp": lambda: tiny_mlp((3, s, s), 10, hidden=128, seed=seed),
    }
    model = build[kind]()
    path = _run_dir(cfg) / f"digits_{kind}_s{seed}_{s}px.safetensors"
    with dist.main_process_first():
        if path.is_file():
            try:
                model.load_state_dict(load_safetensors(path)[0])
                return model.eval().requires_grad_(False)
            except (CheckpointError, RuntimeError) as exc:
                warnings.warn(
                    f"rebuilding the damaged model cache {path} ({exc})", RuntimeWarning, stacklevel=2
                )
                model = build[kind]()
        x, y = digits_split(s)["train"]
        train_digits_classifier(model, x, y, epochs=cfg.digits_source_epochs, seed=seed)
        if dist.is_main_process():
            save_safetensors(model.state_dict(), path)
    return model


def build_source(cfg: EsmaExperimentConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The white-box source model (frozen, eval mode)."""
    if cfg.dataset == "digits":
        return _digits_model(cfg, cfg.source, seed=cfg.seed).to(device)
    return load_model(cfg.source, pretrained=cfg.pretrained, preprocessing=cfg.preprocessing, device=device,
                      download=False)  # fmt: skip


def build_victims(
    cfg: EsmaExperimentConfig, names: list[str] | None = None, device: torch.device | str = "cpu"
) -> dict[str, nn.Module]:
    names = list(cfg.eval.victims if names is None else names)
    if cfg.dataset == "digits":
        return {n: _digits_model(cfg, n, seed=cfg.seed + 1 + i).to(device) for i, n in enumerate(names)}
    return {
        n: load_model(
            n, pretrained=cfg.pretrained, preprocessing=cfg.preprocessing, device=device, download=False
        )
        for n in names
    }


def build_generator(cfg: EsmaExperimentConfig) -> EsmaGenerator:
    g = cfg.generator
    return EsmaGenerator(
        len(cfg.class_ids),
        ch=g.ch,
        ch_mult=g.ch_mult,
        num_res_blocks=g.num_res_blocks,
        gn_groups=g.gn_groups,
        embedding_padding_idx=0 if g.legacy_padding_idx else None,
    )


def _check_ids(path: str | Path, ids: list[int] | None, cfg: EsmaExperimentConfig) -> None:
    if ids is not None and ids != list(cfg.class_ids):
        raise CheckpointError(
            f"{path} was trained for classes {ids}; the config has class_ids={cfg.class_ids}"
        )


# ------------------------------------------------------------------------------------------- stages
def run_screen(
    cfg: EsmaExperimentConfig, out: str | Path | None = None, progress: bool = True
) -> EasySampleBank:
    """Easy-sample bank of the source model (also stores the class-mean logits for stage 1), written to
    ``out`` (default ``run_dir/bank.safetensors``) by rank 0; the other processes read it."""
    device = _setup(cfg)
    out = Path(out) if out is not None else _run_dir(cfg) / "bank.safetensors"
    s = cfg.screening
    if dist.is_main_process():
        data = screening_data(cfg)  # a missing dataset fails before any model is built
        bank = screen_banks(
            build_source(cfg, device), data, cfg.class_ids, q=s.q, batch_size=s.batch_size,
            device=device, fallback=s.fallback, kinds=(s.kind,), grad_wrt=s.grad_wrt, seed=s.seed,
            progress=progress, legacy_boundary=s.legacy_screening_boundary,
        )[s.kind]  # fmt: skip
        bank.save(out)
    dist.barrier()
    return EasySampleBank.load(out)


def load_or_screen(
    cfg: EsmaExperimentConfig, bank: str | Path | None, progress: bool = True
) -> EasySampleBank:
    """The bank at ``bank``, or a fresh screening when ``None``."""
    if bank is None:
        return run_screen(cfg, progress=progress)
    bank = EasySampleBank.load(bank)
    _check_ids("the bank", bank.class_ids, cfg)
    return bank


def run_pretrain(
    cfg: EsmaExperimentConfig, bank: EasySampleBank, out: str | Path | None = None, progress: bool = True
) -> EsmaGenerator:
    """Stage 1 on the class-mean logits, by rank 0 (full batch of K rows: nothing to split); written to
    ``out`` (default ``run_dir/stage1.safetensors``) and read by every process."""
    device = _setup(cfg)
    out = Path(out) if out is not None else _run_dir(cfg) / "stage1.safetensors"
    if dist.is_main_process():
        feats = bank.class_means
        if feats is None:
            feats = class_mean_logits(build_source(cfg, device), screening_data(cfg), cfg.class_ids)
        gen = build_generator(cfg).to(device)
        p = cfg.pretrain
        hist = pretrain_target_embeddings(
            gen, feats.to(device), steps=p.steps, lr=p.lr, weight_decay=p.weight_decay,
            norm_weight=p.norm_weight, cos_weight=p.cos_weight, dist_weight=p.dist_weight,
            accumulate_grads=p.legacy_accumulate_grads, progress=progress,
        )  # fmt: skip
        save_generator(out, gen, cfg.class_ids, stage=1, stage1_loss=hist[-1] if hist else None)
    dist.barrier()
    gen, ids = load_generator(out, map_location=device)
    _check_ids(out, ids, cfg)
    return gen


def run_train(
    cfg: EsmaExperimentConfig,
    bank: EasySampleBank,
    init: str | Path | None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Stage 2 from the stage-1 generator ``init`` (``None``: untrained conditioning); returns the path of
    the final ``generator.safetensors`` in ``out_dir`` (default ``run_dir/stage2``)."""
    device = _setup(cfg)
    out_dir = Path(out_dir) if out_dir is not None else _run_dir(cfg) / "stage2"
    if init is not None:
        gen, ids = load_generator(init, map_location=device)
        _check_ids(init, ids, cfg)
    else:
        gen = build_generator(cfg)
    t = cfg.train
    trainer = EsmaTrainer(
        gen, build_source(cfg, device), bank, eps_train=t.eps_train, lr=t.lr, weight_decay=t.weight_decay,
        smoothing=t.smoothing, beta=t.beta, device=device, seed=cfg.seed,
        legacy_double_normalize=t.legacy_double_normalize,
    )  # fmt: skip
    torch.manual_seed(cfg.seed + 1000 * dist.rank())  # augmentations differ per process
    trainer.fit(
        train_data(cfg), epochs=t.epochs, ckpt_dir=out_dir, ckpt_every=t.ckpt_every, resume=resume,
        max_steps=t.max_steps, progress=progress, batch_size=t.batch_size, num_workers=t.num_workers,
    )  # fmt: skip
    if dist.is_main_process():
        atomic_write_text(out_dir / "train_history.json", json.dumps({"loss": trainer.history}))
    return out_dir / "generator.safetensors"


def _write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _sharded(items: list, work, progress: bool, desc: str) -> list:
    """``[work(item) for item in items]``, each process computing its share, gathered in item order."""
    mine = dist.shard(items)
    if dist.on_main_process(progress):
        from tqdm.auto import tqdm

        mine_iter = tqdm(mine, desc=desc, unit="item")
    else:
        mine_iter = mine
    return dist.gather_rows([work(item) for item in mine_iter], items)


def run_eval(
    cfg: EsmaExperimentConfig,
    checkpoint: str | Path | None = None,
    csv_path: str | Path | None = None,
    ttp_checkpoints: dict[int, str | Path] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Targeted transfer success of ESMA (``checkpoint``) and/or TTP (one generator per target) under
    ``cfg.eval.protocol``: per-target rows written to ``csv_path`` (``source, victim, target, success,
    ...``) by rank 0; returns the per-target rows (every process). The (attack, target) items are
    sharded across processes."""
    if checkpoint is None and not ttp_checkpoints:
        raise FileNotFoundError("no generator given: pass --checkpoint FILE and/or --ttp TARGET=FILE")
    device = _setup(cfg)
    attacks: dict[str, Any] = {}
    if checkpoint is not None:
        gen, ids = load_generator(checkpoint, map_location=device)
        _check_ids(checkpoint, ids, cfg)
        e = cfg.eval
        attacks["esma"] = EsmaAttack(
            gen, cfg.class_ids, e.eps, cfg.train.smoothing, e.precision, e.compile,
            bf16_mode=e.bf16_mode, channels_last=e.channels_last,
        )  # fmt: skip
    if ttp_checkpoints:
        missing = [c for c in cfg.class_ids if c not in ttp_checkpoints]
        if missing:
            raise FileNotFoundError(
                f"TTP needs one generator per target; missing --ttp for targets {missing}"
            )
        gens = {
            t: load_ttp_checkpoint(p, inception=cfg.image_size == 299).to(device)
            for t, p in ttp_checkpoints.items()
        }
        attacks["ttp"] = TTPAttack(gens, eps=cfg.eval.eps, smoothing=cfg.ttp.smoothing)
    source = build_source(cfg, device)
    victims = build_victims(cfg, [v for v in cfg.eval.victims if v != cfg.source], device)
    data = DataLoader(val_data(cfg), batch_size=cfg.eval.batch_size, num_workers=cfg.train.num_workers)

    def work(item: tuple[str, int]) -> list[dict[str, Any]]:
        name, target = item
        return transfer_matrix(
            {cfg.source: source}, victims, lambda _m: attacks[name], data, protocol=cfg.eval.protocol,
            targets=[target], attack_name=name, eps=cfg.eval.eps, steps=1,
            include_white_box=cfg.eval.include_white_box, eval_batch_size=cfg.eval.batch_size,
        )  # fmt: skip

    items = [(name, int(t)) for name in attacks for t in cfg.class_ids]
    rows = [r for part in _sharded(items, work, progress, "eval") for r in part]
    if csv_path is not None and dist.is_main_process():
        _write_csv(rows, Path(csv_path), CSV_COLUMNS)
    return rows


def evaluate(
    cfg: EsmaExperimentConfig,
    checkpoint: str | Path | None = None,
    ttp_checkpoints: dict[int, str | Path] | None = None,
    csv_path: str | Path | None = None,
    progress: bool = True,
    precision: str | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """:func:`run_eval` and its mean-over-targets table: ``{"csv": path, "table": [...]}``;
    ``precision`` / ``compile`` override ``cfg.eval.precision`` / ``cfg.eval.compile`` (the CLI flags;
    ``eval.bf16_mode`` and ``eval.channels_last`` are config keys only)."""
    e = dataclasses.replace(
        cfg.eval, precision=precision or cfg.eval.precision, compile=compile or cfg.eval.compile
    )
    cfg = dataclasses.replace(cfg, eval=e)
    csv_path = Path(csv_path) if csv_path is not None else _run_dir(cfg) / "transfer.csv"
    rows = run_eval(cfg, checkpoint, csv_path, ttp_checkpoints, progress)
    keys = ("attack", "source", "victim", "success", "n", "num_targets")
    return {"csv": str(csv_path), "table": [{k: r[k] for k in keys} for r in mean_over_targets(rows)]}


def run_ttp_train(
    cfg: EsmaExperimentConfig, target: int, out_dir: str | Path | None = None, resume: bool = False,
    progress: bool = True,
) -> Path:  # fmt: skip
    """TTP baseline: one generator towards ``target``, trained on the same source images as ESMA (ours:
    the target-class training set) with the training images of class ``target`` as target images."""
    if target not in cfg.class_ids:
        raise ValueError(f"target {target} is not in class_ids {cfg.class_ids}")
    device = _setup(cfg)
    out_dir = Path(out_dir) if out_dir is not None else _run_dir(cfg) / f"ttp_{target}"
    t = cfg.ttp
    gen = TTPGenerator(t.ngf, t.n_blocks, inception=cfg.image_size == 299)
    trainer = TTPTrainer(
        gen, build_source(cfg, device), t.eps_train, t.lr, t.betas, t.smoothing, t.legacy_similarity_norm,
        device, cfg.seed, target=target,
    )  # fmt: skip
    torch.manual_seed(cfg.seed + 1000 * dist.rank())
    trainer.fit(
        train_data(cfg), class_images(screening_data(cfg), target), epochs=t.epochs, ckpt_dir=out_dir,
        resume=resume, max_steps=t.max_steps, progress=progress, batch_size=t.batch_size,
        num_workers=cfg.train.num_workers,
    )  # fmt: skip
    return out_dir / "generator.safetensors"


def run_es_iterative(
    cfg: EsmaExperimentConfig, csv_path: str | Path | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Iterative targeted attack (``cfg.es.attack``) with easy / random / hard anchor matching vs its own
    loss, on the sub-source images of every target (targets sharded across processes); rows
    ``source, victim, target, success, loss_kind``, written to ``csv_path`` by rank 0."""
    device = _setup(cfg)
    e, s = cfg.es, cfg.screening
    source = build_source(cfg, device)
    banks = screen_banks(
        source, screening_data(cfg), cfg.class_ids, s.q, s.batch_size, device, s.fallback, e.kinds,
        s.grad_wrt, s.seed, progress=dist.on_main_process(progress), legacy_boundary=s.legacy_screening_boundary,
    )  # fmt: skip
    victims = build_victims(cfg, [v for v in cfg.eval.victims if v != cfg.source], device)
    xs, ys = zip(
        *[(xb, torch.as_tensor(yb)) for xb, yb in DataLoader(val_data(cfg), batch_size=cfg.eval.batch_size)]
    )
    x, y = torch.cat(xs), torch.cat(ys)

    def work(t: int) -> list[dict[str, Any]]:
        keep = torch.nonzero(y != t).flatten()
        if e.max_images_per_target:
            keep = keep[: e.max_images_per_target]
        xt = x[keep].to(device)
        tt = torch.full((keep.numel(),), int(t), dtype=torch.long, device=xt.device)
        res = anchor_ablation(
            source, victims, banks, xt, tt, eps=cfg.eval.eps, alpha=e.alpha, steps=e.steps,
            include_ce=e.include_baseline_loss, batch_size=e.batch_size, attack=e.attack, seed=cfg.seed,
        )  # fmt: skip
        return [{"source": cfg.source, "victim": cfg.source if v == "source" else v, "target": t, "success": rate,
                 "loss_kind": kind, "attack": e.attack, "protocol": cfg.eval.protocol, "eps": cfg.eval.eps,
                 "n": int(keep.numel())} for kind, row in res.items() for v, rate in row.items()]  # fmt: skip

    rows = [r for part in _sharded([int(t) for t in cfg.class_ids], work, progress, "+ES") for r in part]
    if csv_path is not None and dist.is_main_process():
        _write_csv(rows, Path(csv_path), list(rows[0]))
    return rows


# ----------------------------------------------------------------------- commands (summaries for the CLI)
def screen(cfg: EsmaExperimentConfig, progress: bool = True) -> dict[str, Any]:
    """``esma screen``: :func:`run_screen` and what it selected."""
    bank = run_screen(cfg, progress=progress)
    return {
        "bank": str(_run_dir(cfg) / "bank.safetensors"),
        "kind": bank.kind,
        "q": bank.q,
        "selected_per_class": {str(c): len(bank.indices[k]) for k, c in enumerate(bank.class_ids)},
        "fallback_used": bank.fallback_used,
        "boundary_admitted": bank.boundary_admitted,
    }


def pretrain(cfg: EsmaExperimentConfig, bank: str | Path | None, progress: bool = True) -> dict[str, Any]:
    """``esma pretrain``: stage 1 from the bank at ``bank`` (screened first when ``None``)."""
    run_pretrain(cfg, load_or_screen(cfg, bank, progress), progress=progress)
    return {"stage1": str(_run_dir(cfg) / "stage1.safetensors")}


def train(
    cfg: EsmaExperimentConfig,
    bank: str | Path | None,
    init: str | Path | None,
    stage1: bool = True,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``esma train``: stage 2; screens and runs stage 1 first when ``bank`` / ``init`` are ``None``
    (``stage1=False``: untrained conditioning; on ``resume`` an existing stage-1 file is reused)."""
    b = load_or_screen(cfg, bank, progress)
    if init is None and stage1:
        init = _run_dir(cfg) / "stage1.safetensors"
        if not (resume and init.is_file()):
            run_pretrain(cfg, b, init, progress=progress)
    return {"generator": str(run_train(cfg, b, init, resume=resume, progress=progress))}


def parse_ttp(items: list[str] | None) -> dict[int, Path] | None:
    """``["24=a.safetensors", ...]`` -> ``{24: Path("a.safetensors")}``; malformed items are an InputError."""
    from papers_shared.errors import InputError

    out = {}
    for item in items or []:
        target, _, path = item.partition("=")
        if not target.strip().isdigit() or not path:
            raise InputError(
                f"--ttp {item!r}: expected TARGET=FILE, e.g. --ttp 24=ttp_24/generator.safetensors"
            )
        out[int(target)] = Path(path)
    return out or None


def ttp_train(cfg: EsmaExperimentConfig, target: int, resume: bool = False, progress: bool = True) -> dict:
    """``esma ttp-train``: :func:`run_ttp_train` for one target."""
    return {"generator": str(run_ttp_train(cfg, target, resume=resume, progress=progress))}


def es_iterative(cfg: EsmaExperimentConfig, csv_path: str | Path | None, progress: bool = True) -> dict:
    """``esma es-iterative``: :func:`run_es_iterative` and its mean over targets per loss and victim."""
    csv_path = Path(csv_path) if csv_path is not None else _run_dir(cfg) / f"es_{cfg.es.attack}.csv"
    table: dict[str, dict[str, list[float]]] = {}
    for r in run_es_iterative(cfg, csv_path, progress):
        table.setdefault(r["loss_kind"], {}).setdefault(r["victim"], []).append(r["success"])
    return {
        "csv": str(csv_path),
        "table": {k: {v: sum(x) / len(x) for v, x in d.items()} for k, d in table.items()},
    }
