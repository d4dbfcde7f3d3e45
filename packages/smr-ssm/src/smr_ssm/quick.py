"""Quick reproduction (``uv run reproduce smr-ssm`` = ``smr-ssm quick``): the sampling-shift experiment of
the shipped ``quick`` config, its claims computed from the measured numbers, and its plots.

The task (``nss.task = observed_steps``, ours): sums of sines whose sampling rate changes between and
within sequences; the time stamps are observed (each input carries the gap since the previous sample),
the target is the value one reference step ahead in continuous time, and the test shifts the step out of
the training range (slower and faster sampling). Models per seed: S4D, S4D + SMR from the same initial
weights, and S5 given the true steps in its discretisation (the recursive competitor the paper contrasts
SMR with, which uses the time stamps structurally: the upper bound). The floor is the oracle that knows
the continuous signal (its error is the observation noise); every model's excess over it is reported.

The claims below were fixed before the run that produced the README's numbers; they are checked, not
tuned. The earlier task (uniform training grid, time never shown, jittered test grid; shipped config
``nss_uniform_grid``) runs after it as a reported variant with its own claims. ``quick=False`` runs 10
seeds of each. The notes add, per claim, the measured numbers that explain its outcome.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot
from smr_ssm.config import ExperimentConfig
from smr_ssm.nss import model_label

__all__ = [
    "build_claims",
    "build_variant_claims",
    "nss_claims",
    "quick_config",
    "quick_reproduction",
    "variant_config",
]

PACKAGE = "smr-ssm"


def quick_config(quick: bool = True) -> ExperimentConfig:
    """The shipped ``quick`` config; ``quick=False`` runs seeds 0-9."""
    over = [] if quick else ["nss.seeds=[0,1,2,3,4,5,6,7,8,9]"]
    return load_config(ExperimentConfig, resolve_config("smr_ssm", "quick"), over)


def variant_config(quick: bool = True) -> ExperimentConfig:
    """The shipped ``nss_uniform_grid`` config (the earlier task, reported as a variant); ``quick=False``
    runs seeds 0-9."""
    over = [] if quick else ["nss.seeds=[0,1,2,3,4,5,6,7,8,9]"]
    return load_config(ExperimentConfig, resolve_config("smr_ssm", "nss_uniform_grid"), over)


def _per_seed(res: dict[str, Any], model: str, cond: str, key: str = "mse") -> list[float]:
    return [r[model]["eval"][cond][key] for r in res["per_seed"]]


def build_claims(res: dict[str, Any], host: str = "s4d", steps_host: str | None = None) -> list[Claim]:
    """Claims of the observed-steps task (stated before measuring), over the seeds of ``res``.

    Effects need the paired per-seed comparison to hold on average *and* in at least 80% of the seeds.
    """
    seeds = [r["seed"] for r in res["per_seed"]]
    n = len(seeds)
    wins = math.ceil(0.8 * n)
    base, smr = model_label("baseline", host), model_label("smr", host)
    hold = [r["hold"]["train_range"] for r in res["per_seed"]]
    mse = {
        (m, c): _per_seed(res, m, c) for m in ("baseline", "smr") for c in ("train_range", "slower", "faster")
    }
    ex_b, ex_s = _per_seed(res, "baseline", "slower", "excess"), _per_seed(res, "smr", "slower", "excess")
    mean = sum(mse["baseline", "train_range"]) / n
    claims = [
        Claim.compare(
            f"{base} beats holding the last value on the training-range steps (MSE)",
            base, mean, "hold last value", sum(hold) / n, op="<",
        ),
        Claim.compare(
            f"{smr} beats holding the last value on the training-range steps (MSE)",
            smr, sum(mse["smr", "train_range"]) / n, "hold last value", sum(hold) / n, op="<",
        ),
        Claim.paired_compare(
            "SMR lowers the MSE under slower sampling (steps 1.5-2.5x, outside training)",
            smr, mse["smr", "slower"], base, mse["baseline", "slower"], op="<", min_wins=wins, seeds=seeds,
        ),
        Claim.paired_compare(
            "SMR lowers the MSE under faster sampling (steps 0.25-0.5x, outside training)",
            smr, mse["smr", "faster"], base, mse["baseline", "faster"], op="<", min_wins=wins, seeds=seeds,
        ),
        Claim.paired_compare(
            "SMR removes >= 10% of the excess MSE over the oracle floor under slower sampling",
            smr, ex_s, f"0.9 x {base}", [0.9 * e for e in ex_b], op="<", min_wins=wins, seeds=seeds,
        ),
        Claim.paired_compare(
            "SMR's learned scale follows the true step (layer 1, Pearson r of the channel-mean scale > 0.3)",
            smr, [r["smr"]["scale_step"]["r_mean"] for r in res["per_seed"]], "r = 0.3", [0.0] * n,
            op=">", margin=0.3, min_wins=wins, seeds=seeds,
        ),
        Claim.paired_compare(
            "SMR's state-norm ratio (max/median, layer 1) under slower sampling is no larger",
            smr, _per_seed(res, "smr", "slower", "state_norm_ratio"),
            base, _per_seed(res, "baseline", "slower", "state_norm_ratio"), op="<=", min_wins=wins, seeds=seeds,
        ),
        Claim.compare(
            "In-distribution MSE of SMR within 10% of the baseline",
            smr, sum(mse["smr", "train_range"]) / n, f"1.1 x {base}", mean, op="<=", margin=0.1 * mean,
        ),
    ]  # fmt: skip
    if "baseline_steps" in res["per_seed"][0]:
        ub = model_label("baseline_steps", steps_host or host)
        claims.append(
            Claim.paired_compare(
                "The task rewards using the step: the model given the true steps beats the baseline under slower sampling",
                ub,
                _per_seed(res, "baseline_steps", "slower"),
                base,
                mse["baseline", "slower"],
                op="<",
                min_wins=wins,
                seeds=seeds,
            )  # fmt: skip
        )
    return claims


def build_variant_claims(
    res: dict[str, Any], host: str = "s4d", pair: tuple[str, str] = ("baseline", "smr")
) -> list[Claim]:
    """Claims of the earlier uniform-grid task (the reported variant): SMR degrades less under jitter.
    ``pair``: the two models compared (``("baseline_steps", "smr_steps")`` when both got the true steps)."""
    seeds = [r["seed"] for r in res["per_seed"]]
    n = len(seeds)
    b, s = pair
    base, smr = model_label(b, host), model_label(s, host)
    hold = sum(r["hold"]["same"] for r in res["per_seed"]) / n
    same_b, same_s = _per_seed(res, b, "same"), _per_seed(res, s, "same")
    deg = {m: [r[m]["degradation"]["jitter"] for r in res["per_seed"]] for m in pair}
    return [
        Claim.compare(f"{base} beats repeat-last on the training grid (MSE)", base, sum(same_b) / n, "repeat-last", hold, op="<"),
        Claim.compare(f"{smr} beats repeat-last on the training grid (MSE)", smr, sum(same_s) / n, "repeat-last", hold, op="<"),
        Claim.paired_compare(
            "SMR degrades less under jittered sampling (MSE_jitter / MSE_same), in >= 2/3 of the seeds",
            smr, deg[s], base, deg[b], op="<", min_wins=math.ceil(2 * n / 3), seeds=seeds,
        ),
        Claim.paired_compare(
            "SMR state-norm ratio (max/median, layer 1) no larger under jitter",
            smr, _per_seed(res, s, "jitter", "state_norm_ratio"),
            base, _per_seed(res, b, "jitter", "state_norm_ratio"), op="<=", seeds=seeds,
        ),
        Claim.compare(
            "In-distribution MSE of SMR within 10% of the baseline",
            smr, sum(same_s) / n, f"1.1 x {base}", sum(same_b) / n, op="<=", margin=0.1 * sum(same_b) / n,
        ),
    ]  # fmt: skip


def nss_claims(cfg: ExperimentConfig, res: dict[str, Any]) -> list[Claim]:
    """The claims a run of ``smr-ssm nss`` supports: the observed-steps claims when it trained the host
    with and without SMR, the uniform-grid claims for that task (also for the pair given the true steps)."""
    models, host = set(cfg.nss.models), cfg.model.layer_type
    if cfg.nss.task == "observed_steps":
        return build_claims(res, host, cfg.nss.steps_host) if {"baseline", "smr"} <= models else []
    pair = next((p for p in (("baseline", "smr"), ("baseline_steps", "smr_steps")) if set(p) <= models), None)
    return build_variant_claims(res, host, pair) if pair else []


def nss_plots(res: dict[str, Any], labels: dict[str, str], out_dir: Path, tag: str = "") -> list[str]:
    """MSE per condition with the oracle floor, excess over the floor, and SMR's scale against the step."""
    summary = res["summary"]
    conds = list(summary["floor"])
    groups = {
        c: {
            **{labels[m]: (summary[m]["mse"][c]["mean"], summary[m]["mse"][c]["std"]) for m in labels},
            "hold last value": (summary["hold"][c]["mean"], summary["hold"][c]["std"]),
            "oracle floor": (summary["floor"][c]["mean"], summary["floor"][c]["std"]),
        }
        for c in conds
    }
    p1 = bar_plot({}, out_dir / f"{PACKAGE}_{tag}mse_by_condition.png", ylabel="test MSE",
                  title="MSE per test grid (mean +- std over seeds)", groups=groups)  # fmt: skip
    excess = {
        c: {labels[m]: (summary[m]["excess"][c]["mean"], summary[m]["excess"][c]["std"]) for m in labels}
        for c in conds
    }
    p2 = bar_plot({}, out_dir / f"{PACKAGE}_{tag}excess.png", ylabel="MSE - oracle floor",
                  title="Excess over the oracle that knows the signal (lower is better)", groups=excess)  # fmt: skip
    plots = [p1.name, p2.name]
    smr = [r["smr"]["scale_step"] for r in res["per_seed"] if "scale_step" in r.get("smr", {})]
    if smr:  # bins common to all seeds; a bin empty in some seed is left out
        keep = [
            i
            for i in range(len(smr[0]["binned"]["step"]))
            if all(math.isfinite(s["binned"]["scale"][i]) for s in smr)
        ]
        series = {
            f"seed {r['seed']}": [r["smr"]["scale_step"]["binned"]["scale"][i] for i in keep]
            for r in res["per_seed"]
        }
        x = [smr[0]["binned"]["step"][i] for i in keep]
        p3 = line_plot(series, out_dir / f"{PACKAGE}_{tag}scale_vs_step.png", x=x,
                       xlabel="true relative step tau_k", ylabel="SMR scale (layer 1, channel mean)",
                       title="Does SMR's scale follow the sampling step?")  # fmt: skip
        plots.append(p3.name)
    return plots


def _labels(cfg: ExperimentConfig) -> dict[str, str]:
    return {
        m: model_label(m, cfg.nss.steps_host if "steps" in m and cfg.nss.steps_host else cfg.model.layer_type)
        for m in cfg.nss.models
    }


def _notes(res: dict[str, Any], labels: dict[str, str]) -> str:
    s = res["summary"]
    parts = []
    for c in s["floor"]:
        row = ", ".join(
            f"{labels[m]} {s[m]['mse'][c]['mean']:.4g} (excess {s[m]['excess'][c]['mean']:.4g})"
            for m in labels
        )
        parts.append(f"{c}: floor {s['floor'][c]['mean']:.4g}, hold {s['hold'][c]['mean']:.4g}, {row}")
    text = "; ".join(parts)
    if "scale_step" in s.get("smr", {}):
        ss = s["smr"]["scale_step"]
        text += (
            f". SMR scale vs true step (layer 1): r = {ss['r_mean']['mean']:.3f} +- {ss['r_mean']['std']:.3f}, "
            f"mean |r| per channel {ss['r_abs_channel']['mean']:.3f}, slope {ss['slope']['mean']:.3f}"
        )
    return text + "."


def _diagnostics(res: dict[str, Any], variant: bool = False) -> dict[str, Any]:
    """Numbers that explain the outcome of each claim (ours): how much of the baseline's excess SMR removes,
    how strongly and with which sign SMR's scale follows the step, and the size of the state-norm gap."""
    rows = res["per_seed"]
    cond = "jitter" if variant else "slower"
    removed = [1 - r["smr"]["eval"][cond]["excess"] / r["baseline"]["eval"][cond]["excess"] for r in rows]
    out: dict[str, Any] = {
        f"excess_removed_{cond}": removed,
        f"state_norm_ratio_gap_{cond}": [
            r["smr"]["eval"][cond]["state_norm_ratio"] - r["baseline"]["eval"][cond]["state_norm_ratio"]
            for r in rows
        ],
        f"state_norm_ratio_baseline_{cond}": [r["baseline"]["eval"][cond]["state_norm_ratio"] for r in rows],
    }
    if "scale_step" in rows[0]["smr"]:
        ss = [r["smr"]["scale_step"] for r in rows]
        out["r_mean"] = [s["r_mean"] for s in ss]
        out["r_abs_channel"] = [s["r_abs_channel"] for s in ss]
        out["slope"] = [s["slope"] for s in ss]
        out["scale_mean_range"] = [max(s["scale_mean"].values()) - min(s["scale_mean"].values()) for s in ss]
    if variant:
        same = [r["smr"]["eval"]["same"]["mse"] / r["baseline"]["eval"]["same"]["mse"] for r in rows]
        jit = [r["smr"]["eval"]["jitter"]["mse"] / r["baseline"]["eval"]["jitter"]["mse"] for r in rows]
        out["mse_ratio_smr_over_baseline"] = {"same": same, "jitter": jit}
    return out


def _fmt(xs: list[float], pct: bool = False) -> str:
    f = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    return f"{statistics.fmean(xs) * f:+.3g}{unit} (seeds {', '.join(f'{x * f:+.2g}' for x in xs)})"


def _why(diag: dict[str, Any], variant: bool = False) -> str:
    """One sentence per measured cause, from :func:`_diagnostics`."""
    cond = "jitter" if variant else "slower"
    parts = [
        f"SMR removes {_fmt(diag[f'excess_removed_{cond}'], pct=True)} of the baseline's excess over the "
        f"floor under {cond} sampling",
        f"state-norm ratio SMR - baseline under {cond}: {_fmt(diag[f'state_norm_ratio_gap_{cond}'])} "
        f"(baseline ratio {statistics.fmean(diag[f'state_norm_ratio_baseline_{cond}']):.3g}: no diverging "
        "state for SMR to suppress)",
    ]
    if "r_mean" in diag:
        pos = sum(r > 0 for r in diag["r_mean"])
        parts.append(
            f"SMR scale vs true step: channel-mean r {_fmt(diag['r_mean'])} (positive in {pos}/"
            f"{len(diag['r_mean'])} seeds) while the per-channel |r| is {_fmt(diag['r_abs_channel'])}"
            + (
                ": single channels follow the step but with mixed signs that cancel in the mean"
                if statistics.fmean(diag["r_abs_channel"]) >= 0.2
                else ": no channel follows the step"
            )
            + f"; the slope of the mean scale on the relative step is {_fmt(diag['slope'])} and the mean scale moves by "
            f"{_fmt(diag['scale_mean_range'])} across test ranges, far from the s ~ tau of the ZOH argument"
        )
    if variant:
        m = diag["mse_ratio_smr_over_baseline"]
        parts.append(
            f"SMR/baseline MSE on the training grid {_fmt(m['same'])}, on the jittered grid {_fmt(m['jitter'])}: "
            "the gain is larger in distribution, so the degradation ratio rises"
        )
    return "; ".join(parts)


def _report(res: dict[str, Any]) -> dict[str, Any]:
    """The floor, each model's excess over it and SMR's scale-step correlation, seed mean +- std."""
    s = res["summary"]
    models = [m for m in s if m not in ("floor", "hold")]
    return {
        "floor": s["floor"],
        "excess": {m: s[m]["excess"] for m in models},
        "scale_step": {m: s[m]["scale_step"] for m in models if "scale_step" in s[m]},
    }


def quick_reproduction(out_dir: Path, quick: bool = True) -> QuickResult:
    """Run the shipped ``quick`` config and the uniform-grid variant (``nss_uniform_grid``); ``quick=False``
    runs 10 seeds of each."""
    from smr_ssm.experiment import run_nss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = quick_config(quick)
    res = run_nss(cfg, progress=False, log=lambda msg: print(msg, flush=True))
    labels = _labels(cfg)
    claims = build_claims(res, cfg.model.layer_type, cfg.nss.steps_host)
    plots = nss_plots(res, labels, out_dir)
    diag = _diagnostics(res)
    notes = _notes(res, labels) + " Why: " + _why(diag) + "."
    metrics: dict[str, Any] = {**_report(res), "diagnostics": diag, "summary": res["summary"],
                               "per_seed": res["per_seed"], "labels": labels}  # fmt: skip
    vcfg = variant_config(quick)
    variant = run_nss(vcfg, progress=False, log=lambda msg: print(msg, flush=True))
    vclaims = build_variant_claims(variant, vcfg.model.layer_type)
    for c in vclaims:
        c.claim = f"[uniform-grid variant] {c.claim}"
    claims += vclaims
    plots += nss_plots(variant, _labels(vcfg), out_dir, tag="uniform_grid_")
    vdiag = _diagnostics(variant, variant=True)
    metrics["uniform_grid_variant"] = {**_report(variant), "diagnostics": vdiag, "summary": variant["summary"],
                                       "per_seed": variant["per_seed"]}  # fmt: skip
    notes += " Uniform-grid variant: " + _notes(variant, _labels(vcfg)) + " Why: " + _why(vdiag, True) + "."
    return QuickResult(
        package=PACKAGE,
        command="uv run reproduce smr-ssm" + ("" if quick else " --full"),
        dataset="synthetic sums of sines, sampling rate changing between and within sequences, observed time "
        "stamps; test on slower and faster sampling than in training (variant: uniform training grid, "
        "time never shown, jittered and rescaled test grids)",
        seeds=list(cfg.nss.seeds),
        metrics=metrics,
        claims=claims,
        plots=plots,
        notes=notes,
    )
