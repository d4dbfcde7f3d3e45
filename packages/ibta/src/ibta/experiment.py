"""Transfer-matrix runs: sources x victims x attacks x {untargeted, targeted}, written to a results CSV.

Every (source, attack, mode) cell is attacked once and scored on all victims by
:func:`papers_shared.attacks.transfer_matrix`; rows are appended to ``<out_dir>/<name>/results.csv``
with an atomic write after each round of cells, and a rerun skips the cells already in the CSV (resume).
Targeted runs follow the sub-source protocol (per target, the images of the other classes; the
``target="mean"`` rows average over targets), as ``transfer.py:advtest`` of the official code (commit
6866b7a), which however scores only the source model (``legacy_eval_white_box_only``).

Under ``torchrun --nproc-per-node N`` the batches of every cell are split across the processes
(:func:`papers_shared.distributed.shard`), their per-batch counts gathered back in order
(:func:`~papers_shared.distributed.gather_rows`) and summed; rank 0 writes the CSV. One process computes
the same table: every batch is attacked with the cell's seed (``attack.seed``) alone.
"""

from __future__ import annotations

import copy
import csv
import io
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from papers_shared import distributed as dist
from papers_shared.attacks import (
    RAP,
    SSA,
    IterativeAttack,
    create_attack,
    mean_over_targets,
    transfer_matrix,
)
from papers_shared.checkpoints import atomic_write_text
from papers_shared.errors import InputError

from .attacks import IBTAAttack, base_attack
from .baselines import BASES
from .config import ATTACK_NAMES, MODES, AttackConfig, ExperimentConfig
from .data import batch_blocks, build_data, digits_data, load_batches
from .models import build_model, read_weights

__all__ = [
    "CSV_FIELDS",
    "attack_kwargs",
    "build_attack",
    "read_results",
    "read_rows",
    "run_ablation",
    "run_experiment",
    "summarize",
    "summarize_ablation",
]

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
#: Columns a results table must have to be summarised (``ibta eval``).
REQUIRED = ("mode", "source", "victim", "attack", "target", "success")


def attack_kwargs(cfg: AttackConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`~ibta.attacks.IBTAAttack` / :func:`~ibta.baselines.base_attack`."""
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
    """Attack ``name`` (one of :data:`~ibta.config.ATTACK_NAMES`) on ``model`` with the run's settings."""
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
            shared_transform=cfg.shared_transform,
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


# ------------------------------------------------------------------------------------- results tables
def _check_row(path: Path, i: int, line: int, r: dict[str, Any]) -> None:
    def _bad(row: int, column: str, value: str, rule: str) -> InputError:
        return InputError(
            f"{path}: row {row} (line {line}), column {column!r}: {value!r} {rule}; fix the row or "
            "rewrite the table with `ibta attack`"
        )

    for col in ("source", "victim", "attack"):
        if not (r.get(col) or "").strip():
            raise _bad(i, col, r.get(col) or "", "is empty (a model or attack name is needed)")
    if r["mode"] not in MODES:
        raise _bad(i, "mode", r["mode"], f"is not one of {list(MODES)}")
    try:
        success = float(r["success"])
    except (TypeError, ValueError):
        raise _bad(i, "success", r["success"], "is not a number") from None
    if not 0.0 <= success <= 1.0:
        raise _bad(i, "success", r["success"], "is not a rate in [0, 1]")
    target = (r.get("target") or "").strip()
    if target not in ("", "None", "mean") and not (target.isdigit()):
        raise _bad(i, "target", target, "is not a class id, 'mean' or empty")
    for col in ("n", "successes"):
        v = (r.get(col) or "").strip()
        if v and not v.isdigit():
            raise _bad(i, col, v, "is not a non-negative integer")
    wb = (r.get("white_box") or "").strip()
    if wb not in ("", "True", "False"):
        raise _bad(i, "white_box", wb, "is not True or False")


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a results CSV, validated column by column (empty if the file does not exist).

    A malformed table raises :class:`~papers_shared.errors.InputError` naming the file, the row and the
    column.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict[str, str]] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, [])
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise InputError(
                    f"{path}: line 1 (header) lacks the column(s) {missing}; a results table has the "
                    f"columns {CSV_FIELDS} (written by `ibta attack`)"
                )
            for fields in reader:
                if not fields:
                    continue
                i = len(rows) + 1
                if len(fields) != len(header):
                    raise InputError(
                        f"{path}: row {i} (line {reader.line_num}) has {len(fields)} columns, the header "
                        f"{len(header)}; fix the row or rewrite the table with `ibta attack`"
                    )
                r = dict(zip(header, fields))
                _check_row(path, i, reader.line_num, r)
                rows.append(r)
        except csv.Error as exc:
            raise InputError(f"{path}: line {reader.line_num}: not a valid CSV ({exc})") from None
    return rows


def read_results(path: str | Path) -> list[dict[str, str]]:
    """:func:`read_rows` of a table that must exist and hold rows (``ibta eval``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results CSV not found: {path} (write one with `ibta attack --config ...`)")
    rows = read_rows(path)
    if not rows:
        raise InputError(f"{path}: the table has a header but no rows; run `ibta attack` to fill it")
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def summarize(rows: list[dict]) -> str:
    """Markdown table: one line per (mode, source, attack), one column per victim (success, %)."""
    table: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    victims: list[str] = []
    for r in rows:
        if str(r.get("target")) not in ("None", "", "mean"):
            continue
        key = (str(r["mode"]), str(r["source"]), str(r["attack"]))
        table[key][str(r["victim"])] = 100.0 * float(r["success"])
        if r["victim"] not in victims:
            victims.append(str(r["victim"]))
    lines = ["| mode | source | attack | " + " | ".join(victims) + " |", "|---" * (3 + len(victims)) + "|"]
    for (mode, src, att), vals in table.items():
        cells = [f"{vals[v]:.1f}" if v in vals else "-" for v in victims]
        lines.append(f"| {mode} | {src} | {att} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize_ablation(rows: list[dict]) -> str:
    """One line per swept value and black-box cell: ``lam=0.1 untargeted src->victim attack: 0.734``."""
    lines = []
    for r in rows:
        if str(r.get("target")) in ("None", "", "mean") and str(r["white_box"]) != "True":
            where = f"{r['mode']} {r['source']}->{r['victim']} {r['attack']}"
            lines.append(f"{r['param']}={r['value']:g} {where}: {float(r['success']):.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- runs
def _combine(per_batch: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of a whole cell from its per-batch rows: ``n`` and ``successes`` summed per (victim, target)."""
    rows = [dict(r) for r in per_batch[0]]
    for r in rows:
        r["n"], r["successes"] = 0, 0
    for batch_rows in per_batch:
        for r, b in zip(rows, batch_rows):
            r["n"] += int(b["n"])
            r["successes"] += int(b["successes"])
    for r in rows:
        r["success"] = r["successes"] / r["n"] if r["n"] else float("nan")
    return rows


def _run_cell(
    cfg: ExperimentConfig,
    cell: tuple[str, str, str],
    models: Callable[[str], nn.Module],
    victims: dict[str, nn.Module],
    data: dict[str, tuple[Dataset, str, list[int] | None]],
) -> list[dict[str, Any]]:
    """One (source, attack, mode) cell. Its batches are split across the processes (one process: all of
    them); every batch is attacked with the cell's seed, so the counts do not depend on who ran it."""
    src, att, mode = cell
    source = models(src)
    targeted = mode == "targeted"
    ds, protocol, targets = data[mode]
    blocks = batch_blocks(len(ds), cfg.batch_size)
    if not blocks:
        raise InputError(
            f"the {mode} data of {cfg.name!r} holds no images (dataset {cfg.dataset}, {cfg.data_root})"
        )
    mine = [
        transfer_matrix(
            {src: source},
            {src: source} if cfg.legacy_eval_white_box_only else victims,
            lambda model: build_attack(att, model, cfg.attack, targeted),
            batch,
            protocol=protocol,
            targets=targets,
            attack_name=att,
        )
        for batch in load_batches(ds, dist.shard(blocks))
    ]
    new = _combine(dist.gather_rows(mine, blocks))
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
    return new


def run_experiment(
    cfg: ExperimentConfig, log: Callable[[str], None] | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Run (or resume) the configured transfer matrix and return all rows of the results CSV.

    Under ``torchrun`` the processes split the batches of every cell and rank 0 writes the CSV; every
    process returns the full table.
    """
    from tqdm.auto import tqdm

    info = dist.init_distributed(cfg.device)
    weights = read_weights(cfg)  # a damaged or refused weights file fails before any work
    out = Path(cfg.out_dir) / cfg.name
    csv_path = out / "results.csv"
    rows: list[dict[str, Any]] = [dict(r) for r in read_rows(csv_path)] if cfg.resume else []
    done = {(r["source"], r["attack"], r["mode"]) for r in rows}
    data = {m: build_data(cfg, m == "targeted") for m in cfg.modes}  # fail early when data is absent
    digits = digits_data(cfg.digits) if cfg.dataset == "digits" else None
    cache: dict[str, nn.Module] = {}

    def models(name: str) -> nn.Module:
        return build_model(name, cfg, info.device, cache, weights, digits)

    victims = {v: models(v) for v in cfg.victims}
    cells = [(s, a, m) for s in cfg.sources for a in cfg.attacks for m in cfg.modes]
    for cell in tqdm(cells, desc=cfg.name, disable=not dist.on_main_process(progress)):
        if cell in done:
            continue
        new = _run_cell(cfg, cell, models, victims, data)
        rows.extend(new)
        if dist.is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            _write_rows(csv_path, rows)
            for r in new:
                if log is not None and r["target"] in (None, "mean"):
                    log(
                        f"{r['source']} -> {r['victim']} {r['attack']} {r['mode']}: {float(r['success']):.3f}"
                    )
    dist.barrier()
    return rows


def run_ablation(
    cfg: ExperimentConfig, log: Callable[[str], None] | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """One-at-a-time sweep of ``lam``, ``gamma`` and ``sigma`` around ``cfg.attack`` (ours; the official
    repository has no sweep script).

    Each value is its own experiment ``<name>_<param><value>`` (own CSV, resumable); the returned rows
    carry ``param`` and ``value``.
    """
    out: list[dict[str, Any]] = []
    for param, values in (("lam", cfg.sweep_lam), ("gamma", cfg.sweep_gamma), ("sigma", cfg.sweep_sigma)):
        for v in values:
            sub = copy.deepcopy(cfg)
            setattr(sub.attack, param, float(v))
            sub.name = f"{cfg.name}_{param}{float(v):g}"
            for r in run_experiment(sub, log=log, progress=progress):
                out.append(dict(r) | {"param": param, "value": float(v)})
    return out
