"""Quick reproduction on sklearn digits (spec §8 "small real experiment"), offline, CPU.

Surrogate: a small CNN; victims: a wider CNN, an MLP and a 2-member NormalizedLogitEnsemble (all
trained here on the digits training split). Untargeted attacks on the first ``n_attack`` test images,
eps 0.15, alpha 0.02, 10 steps: X vs IBTA-X (lambda = 0.1 and 1, sigma = gamma = 0.1) for
X in {MI, DI, TI}, over 3 attack seeds (the seed drives x~ and the DI draws). MINE estimates
``I(delta; X)`` for MI and IBTA-MI. The spec's expected directions are checked as claims computed from
the measured numbers; they are reported as they come out.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from papers_shared.attacks import success_rate
from papers_shared.results import Claim, QuickResult, bar_plot

from .attacks import IBTAAttack, base_attack
from .config import QuickConfig
from .digits import DIGITS_MODELS, build_digits_model, digits_data
from .mine import estimate_mutual_information

__all__ = ["build_claims", "quick_reproduction", "run_quick", "variant_names"]

SURROGATE = "digits_cnn"
LABELS = {"mi": "MI", "di": "DI", "ti": "TI"}


def variant_names(cfg: QuickConfig) -> list[str]:
    """``["base", "ibta_lam0.1", "ibta_lam1"]`` for ``cfg.lams = [0.1, 1.0]``."""
    return ["base"] + [f"ibta_lam{lam:g}" for lam in cfg.lams]


def _mean_std(v: list[float]) -> tuple[float, float]:
    return float(statistics.fmean(v)), float(statistics.pstdev(v)) if len(v) > 1 else 0.0


def run_quick(cfg: QuickConfig, log: Any = None) -> dict[str, Any]:
    """Train the digits models, run every attack and return the metrics (means/stds over seeds)."""
    data = digits_data(cfg.digits)
    models = {n: build_digits_model(n, data, cfg.digits) for n in DIGITS_MODELS}
    surrogate = models[SURROGATE]
    victims = {n: m for n, m in models.items() if n != SURROGATE}
    x_all, y_all = data["test"]
    x, y = x_all[: cfg.n_attack], y_all[: cfg.n_attack]
    with torch.no_grad():
        clean_acc = {n: float((m(x_all).argmax(1) == y_all).float().mean()) for n, m in models.items()}
    variants = variant_names(cfg)
    raw: dict[str, dict[str, dict[str, list[float]]]] = {}
    mine_raw: dict[str, list[float]] = {}
    common = dict(eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)
    for si, seed in enumerate(cfg.seeds):
        for fam in cfg.families:
            for var in variants:
                if var == "base":
                    atk = base_attack(fam, surrogate, seed=seed, **common)
                else:
                    lam = cfg.lams[variants.index(var) - 1]
                    atk = IBTAAttack(surrogate, base=fam, lam=lam, seed=seed, **common)
                adv = atk(x, y)
                rec = raw.setdefault(fam, {}).setdefault(var, {})
                rec.setdefault("white_box", []).append(success_rate(surrogate, adv, y, False))
                per_victim = {n: success_rate(m, adv, y, False) for n, m in victims.items()}
                for n, v in per_victim.items():
                    rec.setdefault(n, []).append(v)
                rec.setdefault("black_box", []).append(statistics.fmean(per_victim.values()))
                if fam == "mi" and si < cfg.mine_seeds:
                    a = F.adaptive_avg_pool2d(adv - x, cfg.mine_pool).flatten(1)
                    b = F.adaptive_avg_pool2d(x, cfg.mine_pool).flatten(1)
                    est = estimate_mutual_information(
                        a,
                        b,
                        steps=cfg.mine_steps,
                        batch_size=256,
                        lr=cfg.mine_lr,
                        hidden=cfg.mine_hidden,
                        seed=seed,
                        average_last=max(1, cfg.mine_steps // 10),
                    )
                    mine_raw.setdefault(var, []).append(est.value)
                if log is not None:
                    log(
                        f"seed {seed} {fam} {var}: wb {rec['white_box'][-1]:.3f} bb {rec['black_box'][-1]:.3f}"
                    )
    summary: dict[str, Any] = {}
    for fam, vs in raw.items():
        for var, rec in vs.items():
            for key, vals in rec.items():
                m, s = _mean_std(vals)
                summary[f"{fam}/{var}/{key}"] = m
                summary[f"{fam}/{var}/{key}_std"] = s
    for var, vals in mine_raw.items():
        summary[f"mine/mi/{var}"] = float(statistics.fmean(vals))
    return {"summary": summary, "clean_accuracy": clean_acc, "raw": raw, "mine_raw": mine_raw}


def build_claims(summary: dict[str, float], cfg: QuickConfig) -> list[Claim]:
    """The spec's directions (R1-R3, spec §5 / §8) as claims on the measured means."""
    claims: list[Claim] = []
    for fam in cfg.families:
        X = LABELS.get(fam, fam)
        base_bb = summary[f"{fam}/base/black_box"]
        base_wb = summary[f"{fam}/base/white_box"]
        for lam in cfg.lams:
            var = f"ibta_lam{lam:g}"
            claims.append(
                Claim.compare(
                    f"R1: IBTA-{X} black-box success >= {X} (lambda={lam:g}, mean over seeds and victims)",
                    f"IBTA-{X} (lambda={lam:g})",
                    summary[f"{fam}/{var}/black_box"],
                    X,
                    base_bb,
                    ">=",
                )
            )
            claims.append(
                Claim.compare(
                    f"R2: |white-box(IBTA-{X}, lambda={lam:g}) - white-box({X})| <= {cfg.white_box_tolerance:g}",
                    f"|IBTA-{X} - {X}| white-box (lambda={lam:g})",
                    abs(summary[f"{fam}/{var}/white_box"] - base_wb),
                    "tolerance",
                    cfg.white_box_tolerance,
                    "<=",
                )
            )
    if "mine/mi/base" in summary:
        for lam in cfg.lams:
            key = f"mine/mi/ibta_lam{lam:g}"
            if key in summary:
                claims.append(
                    Claim.compare(
                        f"R3: MINE I(delta; X) lower for IBTA-MI (lambda={lam:g}) than MI",
                        f"IBTA-MI (lambda={lam:g})",
                        summary[key],
                        "MI",
                        summary["mine/mi/base"],
                        "<",
                    )
                )
    return claims


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: QuickConfig | None = None) -> QuickResult:
    """``uv run reproduce ibta``: the digits experiment, claims from the numbers, three bar plots."""
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg) if cfg is not None else QuickConfig()
    if not quick:
        cfg.seeds = [0, 1, 2, 3, 4]
        cfg.n_attack = 540
        cfg.mine_seeds = 3
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = run_quick(cfg)
    s = res["summary"]
    claims = build_claims(s, cfg)
    variants = variant_names(cfg)
    pretty = {"base": "X"} | {f"ibta_lam{lam:g}": f"IBTA-X (lambda={lam:g})" for lam in cfg.lams}
    plots = []
    for key, title in (
        ("black_box", "black-box success (mean of 3 victims)"),
        ("white_box", "white-box success"),
    ):
        groups = {
            LABELS.get(f, f): {pretty[v]: (s[f"{f}/{v}/{key}"], s[f"{f}/{v}/{key}_std"]) for v in variants}
            for f in cfg.families
        }
        name = f"ibta_{key}.png"
        bar_plot({}, out_dir / name, "success rate", f"digits, eps {cfg.eps:g}: {title}", groups=groups)
        plots.append(name)
    if "mine/mi/base" in s:
        vals = {("MI" if v == "base" else pretty[v].replace("X", "MI")): s[f"mine/mi/{v}"] for v in variants}
        bar_plot(vals, out_dir / "ibta_mine.png", "MINE estimate (nats)", "I(delta; X), pooled")
        plots.append("ibta_mine.png")
    failed = [c.claim for c in claims if not c.holds]
    notes = (
        f"Digits {cfg.digits.size}x{cfg.digits.size} RGB, surrogate {SURROGATE}, victims "
        f"{[n for n in DIGITS_MODELS if n != SURROGATE]}; clean accuracy {res['clean_accuracy']}. "
        f"{len(cfg.seeds)} attack seeds. MINE on {cfg.n_attack} pairs (pool {cfg.mine_pool}) is a noisy, "
        "small-sample estimate. " + (f"Claims that do not hold: {failed}." if failed else "All claims hold.")
    )
    metrics = dict(s) | {f"clean_accuracy/{k}": v for k, v in res["clean_accuracy"].items()}
    return QuickResult(
        package="ibta",
        command="uv run reproduce ibta",
        dataset="sklearn digits (bundled), 3-channel, upsampled",
        seeds=list(cfg.seeds),
        metrics=metrics,
        claims=claims,
        device="cpu",
        runtime_s=time.perf_counter() - t0,
        plots=plots,
        notes=notes,
    )
