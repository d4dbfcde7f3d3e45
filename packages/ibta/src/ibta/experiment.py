"""Transfer-matrix runs (spec §5): sources x victims x attacks x {untargeted, targeted}.

Every (source, attack, mode) cell is attacked once and scored on all victims by
:func:`papers_shared.attacks.transfer_matrix`; rows are appended to ``<out_dir>/<name>/results.csv``
with an atomic write after each cell, and a rerun skips the cells already in the CSV (resume).
Targeted runs follow the sub-source protocol (per target, the images of the other classes; the
``target="mean"`` rows average over targets).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from papers_shared.attacks import (
    RAP,
    SSA,
    IterativeAttack,
    NormalizedLogitEnsemble,
    create_attack,
    load_model,
    mean_over_targets,
    transfer_matrix,
)
from papers_shared.checkpoints import atomic_write_text
from papers_shared.data import DatasetNotFoundError, imagenet_subset, nips17_dataset, standard_transform
from papers_shared.device import get_device

from .attacks import BASES, IBTAAttack, base_attack
from .config import AttackConfig, ExperimentConfig

__all__ = [
    "ATTACK_NAMES",
    "CSV_FIELDS",
    "EXTRA_BASELINES",
    "attack_kwargs",
    "build_attack",
    "build_data",
    "build_model",
    "read_rows",
    "run_ablation",
    "run_experiment",
]

#: Shared baselines beyond the X-vs-IBTA-X pairs (spec §4): official RAP-LS, SSA (paper form), the others.
EXTRA_BASELINES = ("ifgsm", "sinifgsm", "admix", "vmifgsm", "rap_official", "ssa_paper")
ATTACK_NAMES = tuple(BASES) + tuple(f"ibta_{b}" for b in BASES) + EXTRA_BASELINES
CSV_FIELDS = [
    "experiment",
    "protocol",
    "mode",
    "source",
    "victim",
    "attack",
    "targeted",
    "target",
    "eps",
    "steps",
    "n",
    "successes",
    "success",
    "white_box",
    "sigma",
    "gamma",
    "lam",
    "source_weights",
    "victim_weights",
    "source_preprocessing",
    "victim_preprocessing",
]


def attack_kwargs(cfg: AttackConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`~ibta.attacks.IBTAAttack` / :func:`~ibta.attacks.base_attack`."""
    return dict(
        eps=cfg.eps,
        alpha=cfg.alpha,
        steps=cfg.steps,
        decay=cfg.decay,
        diversity_prob=cfg.diversity_prob,
        resize_rate=cfg.resize_rate,
        ti_kernel=cfg.ti_kernel,
        ti_nsig=cfg.ti_nsig,
        ssa_n=cfg.ssa_n,
        ssa_rho=cfg.ssa_rho,
        ssa_sigma=cfg.ssa_sigma,
        ssa_mode=cfg.ssa_mode,
        rap_late_start=cfg.rap_late_start,
        rap_inner_steps=cfg.rap_inner_steps,
        rap_alpha_n=cfg.rap_alpha_n,
        rap_eps_n=12.0 if cfg.legacy_rap_eps_n else cfg.rap_eps_n,
        clip_delta=cfg.clip_delta,
        seed=cfg.seed,
    )


def build_attack(name: str, model: nn.Module, cfg: AttackConfig, targeted: bool) -> IterativeAttack:
    """Attack ``name`` (one of :data:`ATTACK_NAMES`) on ``model`` with the run's settings."""
    key = name.lower().replace("-", "_")
    kw = attack_kwargs(cfg)
    if key in BASES:
        return base_attack(key, model, targeted=targeted, **kw)
    if key.startswith("ibta_") and key[5:] in BASES:
        return IBTAAttack(
            model,
            base=key[5:],
            targeted=targeted,
            sigma=cfg.sigma,
            gamma=cfg.gamma,
            lam=cfg.lam,
            gamma_kl=cfg.gamma_kl,
            fuse_branches=cfg.fuse_branches,
            **kw,
        )
    common = dict(eps=cfg.eps, targeted=targeted, seed=cfg.seed)
    if key == "rap_official":
        # official RAP-LS: 400 steps, late start 100, 8 inner PGD steps with random start, eps_n 16/255
        return RAP(model, alpha=2 / 255, steps=400, loss="logit", di=True, ti=True, mi=True, **common)
    if key == "ssa_paper":
        return SSA(model, alpha=cfg.alpha, steps=cfg.steps or 20, **common)
    if key in ("ifgsm", "sinifgsm", "admix", "vmifgsm"):
        extra = {} if cfg.steps is None else {"steps": cfg.steps}
        return create_attack(key, model, **common, **extra)
    raise ValueError(f"unknown attack {name!r}; choose one of {list(ATTACK_NAMES)}")


def build_model(
    name: str, cfg: ExperimentConfig, device: torch.device, cache: dict[str, nn.Module]
) -> nn.Module:
    """A source/victim model by name: registry names (``papers_shared.attacks.load_model``),
    ``"ensemble"`` (NormalizedLogitEnsemble of ``ensemble_members``) or the digits models."""
    if name in cache:
        return cache[name]
    if cfg.dataset == "digits":
        from .digits import build_digits_model, digits_data

        if "_digits_data" not in cache:
            cache["_digits_data"] = digits_data(cfg.digits)  # type: ignore[assignment]
        model = build_digits_model(name, cache["_digits_data"], cfg.digits)  # type: ignore[arg-type]
        model.weights_source = "trained here on sklearn digits"  # type: ignore[assignment]
        model.preprocessing = "none"  # type: ignore[assignment]
    elif name == "ensemble":
        members = [build_model(m, cfg, device, cache) for m in cfg.ensemble_members]
        model = NormalizedLogitEnsemble(members)
        model.weights_source = "+".join(str(getattr(m, "weights_source", "?")) for m in members)  # type: ignore[assignment]
        model.preprocessing = cfg.preprocessing  # type: ignore[assignment]
    else:
        try:
            model = load_model(
                name,
                pretrained=cfg.pretrained,
                preprocessing=cfg.preprocessing,
                device=device,
                download=cfg.download,
            )
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"pretrained weights for {name!r} are not in the local cache and download=False: {err}. "
                "Run once with download=true on a machine with internet (or pre-populate the torch/timm cache)."
            ) from err
    model = model.to(device).eval()
    cache[name] = model
    return model


class _Pairs(torch.utils.data.Dataset):
    """Drop the per-image target of NIPS'17 rows (untargeted runs)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.ds[i]
        return item[0], item[1]


def build_data(cfg: ExperimentConfig, targeted: bool) -> tuple[Iterable[Any], str, list[int] | None]:
    """``(loader, protocol, targets)`` for a mode; raises DatasetNotFoundError when data is absent."""
    if cfg.dataset == "digits":
        from .digits import digits_data

        x, y = digits_data(cfg.digits)["test"]
        if cfg.max_images is not None:
            x, y = x[: cfg.max_images], y[: cfg.max_images]
        batches = [
            (x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)
        ]
        return batches, "all-source", (list(cfg.targets) if targeted else None)
    if cfg.dataset == "nips17":
        ds = nips17_dataset(cfg.data_root, transform=standard_transform(256, 224))
        if not targeted:
            ds = _Pairs(ds)
        protocol, targets = "nips17", None
    else:
        root = Path(cfg.data_root).expanduser()
        if not (root / cfg.split).is_dir():
            raise DatasetNotFoundError(
                "ImageNet-1k",
                root / cfg.split,
                f"IBTA attacks the ImageNet {cfg.split} images of classes {cfg.class_ids} (spec §5). Put the "
                "standard sorted-synset layout <root>/<split>/<wnid>/*.JPEG there (e.g. from image-net.org) "
                "and set data_root=<root>.",
            )
        ds = imagenet_subset(root, cfg.class_ids, cfg.split, transform=standard_transform(256, 224))
        protocol, targets = "ibta-sub-source", (list(cfg.targets) if targeted else None)
    if cfg.max_images is not None:
        ds = Subset(ds, list(range(min(cfg.max_images, len(ds)))))
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=0), protocol, targets


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV (empty if the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def run_experiment(
    cfg: ExperimentConfig, log: Callable[[str], None] | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Run (or resume) the configured transfer matrix and return all rows of the results CSV."""
    from tqdm.auto import tqdm

    for a in cfg.attacks:
        if a.lower().replace("-", "_") not in ATTACK_NAMES:
            raise ValueError(f"unknown attack {a!r} in config; choose from {list(ATTACK_NAMES)}")
    for m in cfg.modes:
        if m not in ("untargeted", "targeted"):
            raise ValueError(f"modes must be 'untargeted' and/or 'targeted', got {m!r}")
    if not cfg.sources or not cfg.victims:
        raise ValueError("sources and victims must be non-empty")
    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    rows: list[dict[str, Any]] = [dict(r) for r in read_rows(csv_path)] if cfg.resume else []
    done = {(r["source"], r["attack"], r["mode"]) for r in rows}
    device = get_device(cfg.device)
    data = {m: build_data(cfg, m == "targeted") for m in cfg.modes}  # fail early when data is absent
    cache: dict[str, nn.Module] = {}
    victims = {v: build_model(v, cfg, device, cache) for v in cfg.victims}
    cells = [(s, a, m) for s in cfg.sources for a in cfg.attacks for m in cfg.modes]
    for src, att, mode in tqdm(cells, desc=cfg.name, disable=not progress):
        if (src, att, mode) in done:
            continue
        source = build_model(src, cfg, device, cache)
        targeted = mode == "targeted"
        loader, protocol, targets = data[mode]
        vict = {src: source} if cfg.legacy_eval_white_box_only else victims
        new = transfer_matrix(
            {src: source},
            vict,
            lambda model, _a=att, _t=targeted: build_attack(_a, model, cfg.attack, _t),
            loader,
            protocol=protocol,
            targets=targets,
            attack_name=att,
        )
        if targets is not None:
            new = new + mean_over_targets(new)
        ib = att.startswith("ibta_")
        for r in new:
            r.update(
                experiment=cfg.name,
                mode=mode,
                sigma=cfg.attack.sigma if ib else "",
                gamma=cfg.attack.gamma if ib else "",
                lam=cfg.attack.lam if ib else "",
            )
        rows.extend(new)
        _write_rows(csv_path, rows)
        if log is not None:
            for r in new:
                if r["target"] in (None, "mean"):
                    log(f"{src} -> {r['victim']} {att} {mode}: {float(r['success']):.3f}")
    return rows


def run_ablation(
    cfg: ExperimentConfig, log: Callable[[str], None] | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """One-at-a-time sweep of ``lam``, ``gamma`` and ``sigma`` (spec §7) around ``cfg.attack``.

    Each value is its own experiment ``<name>_<param><value>`` (own CSV, resumable); the returned rows
    carry ``param`` and ``value``.
    """
    import copy

    out: list[dict[str, Any]] = []
    for param, values in (("lam", cfg.sweep_lam), ("gamma", cfg.sweep_gamma), ("sigma", cfg.sweep_sigma)):
        for v in values:
            sub = copy.deepcopy(cfg)
            setattr(sub.attack, param, float(v))
            sub.name = f"{cfg.name}_{param}{float(v):g}"
            for r in run_experiment(sub, log=log, progress=progress):
                out.append(dict(r) | {"param": param, "value": float(v)})
    return out
