"""Quick reproduction on sklearn digits (ours; offline, CPU), read from the shipped ``quick`` config.

Surrogate: a small CNN; victims: a wider CNN, an MLP and a 2-member NormalizedLogitEnsemble (all trained
here on the digits training split). Untargeted attacks on the first ``n_attack`` test images, X vs
IBTA-X for X in ``families`` (MI, DI, TI, RAP-Logit-TI) at lambda = 0.1 (the default of every attack class
in ``used_attacks.py`` and of ``transfer.py --lmd``, official code commit 6866b7a), sigma = gamma = 0.1,
over the attack ``seeds`` (a seed drives x~ and the DI draws). The paper's relations are claims computed
from the per-seed numbers (:meth:`Claim.paired_compare`):

* R1: IBTA-X black-box success (mean of the victims) >= X;
* R2: IBTA-X white-box success >= X - tolerance (white-box success essentially unchanged);
* R3: MINE estimate of I(delta; X) lower for IBTA-MI than MI.

Ablation (reported, not claimed; first ``ablation_seeds`` seeds): lambda in ``ablation_lams`` with
independent DI draws per branch (the official code), and ``shared_transform`` (ours: one DI draw for
both branches) at lambda 0.1 and at each ablation lambda.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from papers_shared.attacks import success_rate
from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.results import Claim, QuickResult, bar_plot

from .attacks import IBTAAttack, base_attack
from .config import DIGITS_MODELS, ExperimentConfig, QuickConfig
from .data import digits_data
from .mine import estimate_mutual_information
from .models import build_digits_model

__all__ = ["build_claims", "quick_config", "quick_reproduction", "run_quick", "variants"]

SURROGATE = "digits_cnn"
LABELS = {
    "mi": "MI",
    "di": "DI",
    "ti": "TI",
    "s2i": "S2I",
    "logit_ti": "Logit-TI",
    "rap_logit_ti": "RAP-Logit-TI",
}


def quick_config() -> ExperimentConfig:
    """The shipped ``quick`` config (``ibta show-config --config quick``)."""
    return load_config(ExperimentConfig, resolve_config("ibta", "quick"))


def _var(lam: float, shared: bool = False) -> str:
    return f"ibta_lam{lam:g}" + ("_shared" if shared else "")


def variants(q: QuickConfig, family: str) -> tuple[list[str], list[str]]:
    """``(claim variants, ablation variants)`` of a family: ``base`` and ``ibta_lam0.1`` are claimed on
    every seed; the ablation adds the other lambdas and, where DI is on, the shared-draw variants."""
    claim = ["base", _var(q.lam)]
    ablation = [_var(lam) for lam in q.ablation_lams if lam != q.lam]
    if family != "mi":  # shared_transform only changes attacks that draw DI
        ablation += [_var(q.lam, True)] + [_var(lam, True) for lam in q.ablation_lams if lam != q.lam]
    return claim, ablation


def _attack(var: str, family: str, model: torch.nn.Module, q: QuickConfig, seed: int) -> Any:
    kw = dict(eps=q.eps, alpha=q.alpha, steps=q.steps, rap_late_start=q.rap_late_start, seed=seed)
    if var == "base":
        return base_attack(family, model, **kw)
    lam = float(var.removeprefix("ibta_lam").removesuffix("_shared"))
    return IBTAAttack(model, base=family, lam=lam, shared_transform=var.endswith("_shared"), **kw)


def run_quick(cfg: ExperimentConfig, log: Any = None) -> dict[str, Any]:
    """Train the digits models, run every attack; returns per-seed values and their means."""
    q = cfg.quick
    data = digits_data(cfg.digits)
    models = {n: build_digits_model(n, data, cfg.digits) for n in DIGITS_MODELS}
    surrogate = models[SURROGATE]
    victims = {n: m for n, m in models.items() if n != SURROGATE}
    x_all, y_all = data["test"]
    x, y = x_all[: q.n_attack], y_all[: q.n_attack]
    with torch.no_grad():
        clean_acc = {n: float((m(x_all).argmax(1) == y_all).float().mean()) for n, m in models.items()}
    # raw[family][variant][metric] = per-seed values (in the order of the seeds that ran the variant)
    raw: dict[str, dict[str, dict[str, list[float]]]] = {}
    mine: dict[str, list[float]] = {}
    for si, seed in enumerate(q.seeds):
        for fam in q.families:
            claim, ablation = variants(q, fam)
            for var in claim + (ablation if si < q.ablation_seeds else []):
                adv = _attack(var, fam, surrogate, q, seed)(x, y)
                rec = raw.setdefault(fam, {}).setdefault(var, {})
                rec.setdefault("white_box", []).append(success_rate(surrogate, adv, y, False))
                per_victim = {n: success_rate(m, adv, y, False) for n, m in victims.items()}
                for n, v in per_victim.items():
                    rec.setdefault(n, []).append(v)
                rec.setdefault("black_box", []).append(statistics.fmean(per_victim.values()))
                if fam == "mi" and var in claim and si < q.mine_seeds:
                    est = estimate_mutual_information(
                        F.adaptive_avg_pool2d(adv - x, q.mine_pool).flatten(1),
                        F.adaptive_avg_pool2d(x, q.mine_pool).flatten(1),
                        steps=q.mine_steps,
                        batch_size=256,
                        lr=q.mine_lr,
                        hidden=q.mine_hidden,
                        seed=seed,
                        average_last=max(1, q.mine_steps // 10),
                    )
                    mine.setdefault(var, []).append(est.value)
                if log is not None:
                    log(
                        f"seed {seed} {fam} {var}: wb {rec['white_box'][-1]:.3f} bb {rec['black_box'][-1]:.3f}"
                    )
    metrics: dict[str, Any] = {}
    for fam, vs in raw.items():
        for var, rec in vs.items():
            for key, vals in rec.items():
                metrics[f"{fam}/{var}/{key}"] = float(statistics.fmean(vals))
                metrics[f"{fam}/{var}/{key}_std"] = float(statistics.pstdev(vals)) if len(vals) > 1 else 0.0
            metrics[f"{fam}/{var}/black_box_per_seed"] = list(rec["black_box"])
            metrics[f"{fam}/{var}/white_box_per_seed"] = list(rec["white_box"])
    for var, vals in mine.items():
        metrics[f"mine/mi/{var}"] = float(statistics.fmean(vals))
        metrics[f"mine/mi/{var}_per_seed"] = list(vals)
    metrics |= {f"clean_accuracy/{k}": v for k, v in clean_acc.items()}
    return {"metrics": metrics, "raw": raw, "mine": mine, "clean_accuracy": clean_acc}


def build_claims(raw: dict, mine: dict, q: QuickConfig) -> list[Claim]:
    """R1-R3 at lambda = ``q.lam`` as paired claims over the seeds (stated before measuring)."""
    claims: list[Claim] = []
    ib = _var(q.lam)
    n = len(q.seeds)
    wins = math.ceil(q.min_wins_frac * n)
    for fam in q.families:
        X = LABELS.get(fam, fam)
        base, var = raw[fam]["base"], raw[fam][ib]
        claims.append(
            Claim.paired_compare(
                f"R1: IBTA-{X} black-box success >= {X} (lambda={q.lam:g}, mean of 3 victims, {n} seeds, "
                f">= {wins} seeds won)",
                f"IBTA-{X}",
                var["black_box"],
                X,
                base["black_box"],
                ">=",
                min_wins=wins,
                seeds=q.seeds,
            )
        )
        claims.append(
            Claim.paired_compare(
                f"R2: IBTA-{X} white-box success >= {X} - {q.white_box_tolerance:g} (lambda={q.lam:g}, "
                f"{n} seeds, >= {wins} seeds within)",
                f"IBTA-{X}",
                var["white_box"],
                X,
                base["white_box"],
                ">=",
                margin=-q.white_box_tolerance,
                min_wins=wins,
                seeds=q.seeds,
            )
        )
    if mine.get("base") and mine.get(ib):
        k = len(mine["base"])
        claims.append(
            Claim.paired_compare(
                f"R3: MINE I(delta; X) lower for IBTA-MI (lambda={q.lam:g}) than MI ({k} seeds, "
                f">= {math.ceil(q.min_wins_frac * k)} seeds won)",
                "IBTA-MI",
                mine[ib],
                "MI",
                mine["base"],
                "<",
                min_wins=math.ceil(q.min_wins_frac * k),
                seeds=q.seeds[:k],
            )
        )
    return claims


def _undecided(claims: list[Claim]) -> list[str]:
    """Claims whose paired difference, measured from the claim's threshold (the margin), is smaller than
    its spread over seeds: more seeds would be needed to decide them."""
    out = []
    for c in claims:
        p = c.paired or {}
        gap = p.get("diff_mean", 0.0) - c.margin
        if p.get("n", 0) > 1 and abs(gap) < p["diff_std"]:
            out.append(
                f"{c.claim.split(':')[0]} {c.method}: paired difference {p['diff_mean']:+.3f} (threshold "
                f"{c.margin:+g}) is within its spread {p['diff_std']:.3f} (per seed {min(p['diff']):+.3f} to "
                f"{max(p['diff']):+.3f})"
            )
    return out


def _plots(out_dir: Path, metrics: dict[str, Any], claims: list[Claim], q: QuickConfig) -> list[str]:
    pretty = {"base": "X", _var(q.lam): f"IBTA lam {q.lam:g}"}
    for lam in q.ablation_lams:
        pretty[_var(lam)] = f"IBTA lam {lam:g} (abl.)"
    pretty[_var(q.lam, True)] = f"IBTA lam {q.lam:g} shared DI (abl.)"
    for lam in q.ablation_lams:
        pretty[_var(lam, True)] = f"IBTA lam {lam:g} shared DI (abl.)"
    plots = []
    for key, title in (
        ("black_box", "black-box success (mean of 3 victims)"),
        ("white_box", "white-box success"),
    ):
        groups = {}
        every = [*variants(q, "di")[0], *variants(q, "di")[1]]  # the variants of a family with DI
        for fam in q.families:
            groups[LABELS[fam]] = {
                pretty[v]: (
                    (metrics[f"{fam}/{v}/{key}"], metrics[f"{fam}/{v}/{key}_std"])
                    if f"{fam}/{v}/{key}" in metrics
                    else (float("nan"), 0.0)
                )
                for v in every
            }
        name = f"ibta_{key}.png"
        bar_plot({}, out_dir / name, "success rate", f"digits, eps {q.eps:g}: {title}", groups=groups)
        plots.append(name)
    diffs = {
        c.method.removeprefix("IBTA-"): (c.paired["diff_mean"], c.paired["diff_std"])
        for c in claims
        if c.claim.startswith("R1") and c.paired
    }
    bar_plot(
        diffs,
        out_dir / "ibta_paired_diff.png",
        "IBTA-X - X, black-box (mean +- std over seeds)",
        f"paired per-seed differences, lambda {q.lam:g}",
    )
    plots.append("ibta_paired_diff.png")
    if f"mine/mi/{_var(q.lam)}" in metrics:
        vals = {"MI": metrics["mine/mi/base"], f"IBTA-MI lam {q.lam:g}": metrics[f"mine/mi/{_var(q.lam)}"]}
        bar_plot(vals, out_dir / "ibta_mine.png", "MINE estimate (nats)", "I(delta; X), pooled")
        plots.append("ibta_mine.png")
    return plots


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: ExperimentConfig | None = None) -> QuickResult:
    """``uv run reproduce ibta``: the digits experiment, claims from the numbers, bar plots.

    ``quick=False`` runs 10 seeds on all 540 test images, the ablation on every seed and MINE on 5.
    """
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg) if cfg is not None else quick_config()
    q = cfg.quick
    if not quick:
        q.seeds = list(range(10))
        q.n_attack = 540
        q.ablation_seeds = 10
        q.mine_seeds = 5
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = run_quick(cfg)
    claims = build_claims(res["raw"], res["mine"], q)
    plots = _plots(out_dir, res["metrics"], claims, q)
    failed = [c.claim.split(":")[0] + " " + c.method for c in claims if not c.holds]
    undecided = _undecided(claims)
    notes = (
        f"Digits {cfg.digits.size}x{cfg.digits.size} RGB, surrogate {SURROGATE}, victims "
        f"{[n for n in DIGITS_MODELS if n != SURROGATE]}; clean accuracy "
        f"{ {k: round(v, 3) for k, v in res['clean_accuracy'].items()} }. Claims at lambda {q.lam:g} over "
        f"{len(q.seeds)} attack seeds (x~ and DI draws), {q.n_attack} test images; ablation (lambda "
        f"{q.ablation_lams}, shared DI draw) on the first {q.ablation_seeds} seeds, reported only. MINE on "
        f"{q.n_attack} pairs (pool {q.mine_pool}) is a small-sample estimate. "
        + (f"Claims that do not hold: {failed}. " if failed else "All claims hold. ")
        + (f"Undecided at this number of seeds: {undecided}." if undecided else "")
    )
    return QuickResult(
        package="ibta",
        command="uv run reproduce ibta",
        dataset="sklearn digits (bundled), 3-channel, upsampled",
        seeds=list(q.seeds),
        metrics=res["metrics"],
        claims=claims,
        device="cpu",
        runtime_s=time.perf_counter() - t0,
        plots=plots,
        notes=notes.strip(),
    )
