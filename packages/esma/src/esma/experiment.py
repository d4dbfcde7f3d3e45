"""Paper-scale pipeline driven by :class:`~esma.config.EsmaExperimentConfig` (spec §5):
screening -> stage 1 -> stage 2 -> sub-source evaluation, and the TTP baseline on the same data.

``dataset="imagenet"`` uses the real ImageNet folders and public torchvision/timm weights (never
downloaded here: missing weights raise ``FileNotFoundError`` naming the cache to fill);
``dataset="digits"`` runs the same code on sklearn digits with tiny CNNs (CLI smoke tests).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from papers_shared.attacks import load_model, mean_over_targets, tiny_cnn, tiny_mlp, transfer_matrix
from papers_shared.checkpoints import atomic_save, atomic_write_text, load_checkpoint
from papers_shared.device import get_device, seed_everything

from .analysis import anchor_ablation
from .attack import EsmaAttack
from .config import EsmaExperimentConfig
from .data import (
    digits_split,
    imagenet_screening_set,
    imagenet_train_set,
    imagenet_val_set,
    train_digits_classifier,
)
from .generator import EsmaGenerator, load_generator, save_generator
from .pretrain import pretrain_target_embeddings
from .screening import EasySampleBank, class_mean_logits, screen_banks, screen_easy_samples
from .train import EsmaTrainer
from .ttp import TTPAttack, TTPGenerator, TTPTrainer, load_ttp_checkpoint

__all__ = [
    "build_generator",
    "build_source",
    "build_victims",
    "run_es_iterative",
    "run_eval",
    "run_pretrain",
    "run_screen",
    "run_train",
    "run_ttp_train",
]


def _device(cfg: EsmaExperimentConfig) -> torch.device:
    return get_device(cfg.device)


def _check_class_ids(cfg: EsmaExperimentConfig) -> None:
    n = 10 if cfg.dataset == "digits" else 1000
    bad = [c for c in cfg.class_ids if not 0 <= c < n]
    if bad or len(set(cfg.class_ids)) != len(cfg.class_ids) or not cfg.class_ids:
        raise ValueError(f"class_ids must be distinct ids in [0, {n}), got {cfg.class_ids}")


def _digits_model(cfg: EsmaExperimentConfig, kind: str, seed: int) -> nn.Module:
    """Tiny digits classifier, trained once and cached under ``out_dir``."""
    s = cfg.digits_size
    build = {
        "tiny_cnn": lambda: tiny_cnn(10, 3, width=16, seed=seed),
        "tiny_cnn_wide": lambda: tiny_cnn(10, 3, width=24, seed=seed),
        "tiny_mlp": lambda: tiny_mlp((3, s, s), 10, hidden=128, seed=seed),
    }
    if kind not in build:
        raise ValueError(f"digits models are {sorted(build)}, got {kind!r}")
    model = build[kind]()
    path = Path(cfg.out_dir) / cfg.name / f"digits_{kind}_s{seed}_{s}px.pt"
    if path.is_file():
        model.load_state_dict(load_checkpoint(path))
        model.eval().requires_grad_(False)
        return model
    x, y = digits_split(s)["train"]
    train_digits_classifier(model, x, y, epochs=cfg.digits_source_epochs, seed=seed)
    atomic_save(model.state_dict(), path)
    return model


def build_source(cfg: EsmaExperimentConfig) -> nn.Module:
    """The white-box source model (frozen, eval mode)."""
    if cfg.dataset == "digits":
        return _digits_model(cfg, cfg.source, seed=cfg.seed).to(_device(cfg))
    return load_model(
        cfg.source,
        pretrained=cfg.pretrained,
        preprocessing=cfg.preprocessing,
        device=_device(cfg),
        download=False,
    )


def build_victims(cfg: EsmaExperimentConfig, names: list[str] | None = None) -> dict[str, nn.Module]:
    names = list(cfg.eval.victims if names is None else names)
    if cfg.dataset == "digits":
        return {n: _digits_model(cfg, n, seed=cfg.seed + 1 + i).to(_device(cfg)) for i, n in enumerate(names)}
    return {
        n: load_model(
            n, pretrained=cfg.pretrained, preprocessing=cfg.preprocessing, device=_device(cfg), download=False
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


def _screening_data(cfg: EsmaExperimentConfig):
    if cfg.dataset == "digits":
        return TensorDataset(*digits_split(cfg.digits_size)["train"])
    return imagenet_screening_set(cfg.imagenet_root, cfg.class_ids, cfg.resize, cfg.image_size)


def _train_loader(cfg: EsmaExperimentConfig, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.dataset == "digits":
        ds = TensorDataset(*digits_split(cfg.digits_size)["train"])
        return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, drop_last=True)
    t = cfg.train
    ds = imagenet_train_set(
        cfg.imagenet_root,
        cfg.class_ids,
        cfg.image_size,
        crop_scale=t.crop_scale,
        grayscale_p=t.grayscale_p,
        erasing_p=t.erasing_p,
    )
    return DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=t.num_workers, generator=g, drop_last=True
    )


def _val_data(cfg: EsmaExperimentConfig) -> DataLoader:
    if cfg.dataset == "digits":
        x, y = digits_split(cfg.digits_size)["test"]
        return DataLoader(TensorDataset(x, y), batch_size=cfg.eval.batch_size)
    ds = imagenet_val_set(cfg.imagenet_root, cfg.class_ids, cfg.resize, cfg.image_size)
    return DataLoader(ds, batch_size=cfg.eval.batch_size, num_workers=cfg.train.num_workers)


# ---------------------------------------------------------------------------------------- stages
def run_screen(cfg: EsmaExperimentConfig, out: str | Path) -> EasySampleBank:
    """Spec §3.2: easy-sample bank of the source model (also stores class-mean logits for stage 1)."""
    _check_class_ids(cfg)
    seed_everything(cfg.seed)
    s = cfg.screening
    bank = screen_easy_samples(
        build_source(cfg),
        _screening_data(cfg),
        cfg.class_ids,
        q=s.q,
        batch_size=s.batch_size,
        device=_device(cfg),
        fallback=s.fallback,
        kind=s.kind,
        grad_wrt=s.grad_wrt,
        seed=s.seed,
        progress=True,
    )
    bank.save(out)
    return bank


def run_pretrain(cfg: EsmaExperimentConfig, bank: EasySampleBank, out: str | Path) -> EsmaGenerator:
    """Spec §3.4: stage-1 pretraining of the conditioning vectors on the class-mean logits."""
    seed_everything(cfg.seed)
    feats = bank.class_means
    if feats is None:
        feats = class_mean_logits(build_source(cfg), _screening_data(cfg), cfg.class_ids)
    gen = build_generator(cfg).to(_device(cfg))
    p = cfg.pretrain
    hist = pretrain_target_embeddings(
        gen,
        feats.to(_device(cfg)),
        steps=p.steps,
        lr=p.lr,
        weight_decay=p.weight_decay,
        norm_weight=p.norm_weight,
        cos_weight=p.cos_weight,
        dist_weight=p.dist_weight,
        accumulate_grads=p.legacy_accumulate_grads,
        progress=True,
    )
    save_generator(out, gen, cfg.class_ids, stage=1, stage1_loss=hist[-1] if hist else None)
    return gen


def run_train(
    cfg: EsmaExperimentConfig,
    bank: EasySampleBank,
    init: str | Path | None,
    out_dir: str | Path,
    resume: bool = False,
) -> Path:
    """Spec §3.5: stage 2 from the stage-1 checkpoint ``init``; returns ``out_dir/generator.pt``."""
    seed_everything(cfg.seed)
    if init is not None:
        gen, ids = load_generator(init)
        if ids is not None and ids != list(cfg.class_ids):
            raise ValueError(
                f"stage-1 checkpoint {init} was trained for classes {ids}, config has {cfg.class_ids}"
            )
    else:
        gen = build_generator(cfg)
    t = cfg.train
    trainer = EsmaTrainer(
        gen,
        build_source(cfg),
        bank,
        eps_train=t.eps_train,
        lr=t.lr,
        weight_decay=t.weight_decay,
        smoothing=t.smoothing,
        beta=t.beta,
        device=_device(cfg),
        seed=cfg.seed,
        legacy_double_normalize=t.legacy_double_normalize,
    )
    trainer.fit(
        _train_loader(cfg, t.batch_size),
        epochs=t.epochs,
        ckpt_dir=out_dir,
        ckpt_every=t.ckpt_every,
        resume=resume,
        max_steps=t.max_steps,
    )
    atomic_write_text(Path(out_dir) / "train_history.json", json.dumps({"loss": trainer.history}))
    return Path(out_dir) / "generator.pt"


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = ["source", "victim", "target", "success", "attack", "protocol", "eps", "n", "successes", "white_box",
            "source_weights", "victim_weights", "source_preprocessing", "victim_preprocessing"]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def run_eval(
    cfg: EsmaExperimentConfig,
    ckpt: str | Path | None = None,
    csv_path: str | Path | None = None,
    ttp_checkpoints: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Targeted transfer success (spec §5) of ESMA (``ckpt``) and/or TTP (one checkpoint per target):
    per-target rows written to ``csv_path`` (``source, victim, target, success, ...``); returns the
    mean-over-targets rows."""
    if ckpt is None and not ttp_checkpoints:
        raise ValueError("pass an ESMA checkpoint (--ckpt) and/or TTP checkpoints (--ttp target=path)")
    device = _device(cfg)
    source = build_source(cfg)
    victims = build_victims(cfg, [v for v in cfg.eval.victims if v != cfg.source])
    data = _val_data(cfg)
    rows: list[dict[str, Any]] = []
    attacks: dict[str, Any] = {}
    if ckpt is not None:
        gen, ids = load_generator(ckpt, map_location=device)
        if ids is not None and ids != list(cfg.class_ids):
            raise ValueError(f"{ckpt} was trained for classes {ids}, config has {cfg.class_ids}")
        attacks["esma"] = EsmaAttack(
            gen.to(device), cfg.class_ids, eps=cfg.eval.eps, smoothing=cfg.train.smoothing
        )
    if ttp_checkpoints:
        missing = [c for c in cfg.class_ids if c not in ttp_checkpoints]
        if missing:
            raise ValueError(f"TTP needs one checkpoint per target; missing {missing}")
        gens = {t: load_ttp_checkpoint(p).to(device) for t, p in ttp_checkpoints.items()}
        attacks["ttp"] = TTPAttack(gens, eps=cfg.eval.eps, smoothing=cfg.ttp.smoothing)
    for name, atk in attacks.items():
        rows += transfer_matrix(
            {cfg.source: source},
            victims,
            lambda _m, a=atk: a,
            data,
            protocol=cfg.eval.protocol,
            targets=cfg.class_ids,
            attack_name=name,
            eps=cfg.eval.eps,
            steps=1,
            include_white_box=cfg.eval.include_white_box,
            eval_batch_size=cfg.eval.batch_size,
        )
    if csv_path is not None:
        _write_csv(rows, Path(csv_path))
    return mean_over_targets(rows)


def run_ttp_train(cfg: EsmaExperimentConfig, target: int, out_dir: str | Path, resume: bool = False) -> Path:
    """TTP baseline: one generator towards ``target``, trained on the same source images as ESMA
    ([ours]: the target-class training set) with target images of class ``target``."""
    if target not in cfg.class_ids:
        raise ValueError(f"target {target} is not in class_ids {cfg.class_ids}")
    seed_everything(cfg.seed)
    t = cfg.ttp
    loader = _train_loader(cfg, t.batch_size)
    screen = _screening_data(cfg)
    if cfg.dataset == "digits":
        x, y = screen.tensors
        match = DataLoader(TensorDataset(x[y == target]), batch_size=t.batch_size, shuffle=True)
    else:
        from torch.utils.data import Subset

        base = screen.dataset if isinstance(screen, Subset) else screen
        idx = [i for i in getattr(screen, "indices", range(len(screen))) if base.samples[i][1] == target]
        match = DataLoader(
            Subset(base, idx), batch_size=t.batch_size, shuffle=True, num_workers=cfg.train.num_workers
        )
    gen = TTPGenerator(t.ngf, t.n_blocks, inception=cfg.image_size == 299)
    trainer = TTPTrainer(
        gen,
        build_source(cfg),
        t.eps_train,
        t.lr,
        t.betas,
        t.smoothing,
        t.legacy_similarity_norm,
        _device(cfg),
        cfg.seed,
    )
    trainer.fit(loader, match, epochs=t.epochs, ckpt_dir=out_dir, resume=resume, max_steps=t.max_steps)
    return Path(out_dir) / "netG.pth"


def run_es_iterative(cfg: EsmaExperimentConfig, csv_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Spec §3.7: iterative targeted attack (``cfg.es.attack``) with easy / random / hard anchor
    matching vs its own loss, on the sub-source images of every target; rows ``source, victim, target,
    success, loss_kind``."""
    _check_class_ids(cfg)
    seed_everything(cfg.seed)
    e, s = cfg.es, cfg.screening
    source = build_source(cfg)
    banks = screen_banks(
        source, _screening_data(cfg), cfg.class_ids, s.q, s.batch_size, _device(cfg), s.fallback, e.kinds,
        s.grad_wrt, s.seed, progress=True,
    )  # fmt: skip
    victims = build_victims(cfg, [v for v in cfg.eval.victims if v != cfg.source])
    xs, ys = [], []
    for xb, yb in _val_data(cfg):
        xs.append(xb)
        ys.append(torch.as_tensor(yb))
    x, y = torch.cat(xs), torch.cat(ys)
    rows: list[dict[str, Any]] = []
    for t in cfg.class_ids:
        keep = torch.nonzero(y != t).flatten()
        if e.max_images_per_target:
            keep = keep[: e.max_images_per_target]
        xt = x[keep].to(_device(cfg))
        tt = torch.full((keep.numel(),), int(t), dtype=torch.long, device=xt.device)
        res = anchor_ablation(
            source, victims, banks, xt, tt, eps=cfg.eval.eps, alpha=e.alpha, steps=e.steps,
            include_ce=e.include_baseline_loss, batch_size=e.batch_size, attack=e.attack, seed=cfg.seed,
        )  # fmt: skip
        for kind, row in res.items():
            for victim, rate in row.items():
                rows.append({"source": cfg.source, "victim": cfg.source if victim == "source" else victim,
                             "target": t, "success": rate, "loss_kind": kind, "attack": e.attack,
                             "protocol": cfg.eval.protocol, "eps": cfg.eval.eps, "n": int(keep.numel())})  # fmt: skip
    if csv_path is not None:
        path = Path(csv_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows
