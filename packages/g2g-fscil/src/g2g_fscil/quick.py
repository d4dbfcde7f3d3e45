"""Quick reproduction: digits FSCIL on CPU, configured by the shipped ``quick`` config (``quick_full``
for ``--full``).

sklearn digits (8x8), base classes 0-5, then two 2-way 5-shot sessions ({6, 7}, {8, 9}); TinyConvNet with
a 4x4 map pooled to 2x2 (M = 4 nodes), d = 32. Per seed, one CE pre-training is shared by every variant;
each memory model is meta-trained for 300 episodes of 6-way 5-shot (V2V modes 1 and 3 share one
meta-training); NCM and TEEN use the pre-trained backbone as it is. Beside the numbers: the floor (chance,
``1 / seen classes``) and an upper bound (joint CE training on every class with all its images).

Claims (stated before measuring; paired over the seeds, a majority of seeds must agree):
(a) the default LGP lowers the collapse index after meta-training, (a-cost) at most 1 point of average
accuracy; (b) G2G's average accuracy >= V2V's - 1 point, for every V2V mode in the run (mode 3 aligns
``g_phi`` for the same ``retrain_iter`` steps as G2G, mode 1 does not align); the paper's direction: G2G
average > V2V and PD < V2V; (c) G2G and V2V beat NCM without meta-training on PD or average accuracy; the
backbone is unchanged by the sessions.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import torch

from g2g_fscil.config import ExperimentConfig, preset
from g2g_fscil.data import gather, load_fscil_data
from g2g_fscil.experiment import build_model, joint_bound, pretrain_from_config, run_fscil, variant_config
from g2g_fscil.graphs import collapse_index
from g2g_fscil.lgp import backbone_graph
from papers_shared.device import seed_everything
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot

__all__ = ["build_claims", "quick_reproduction", "run_seed", "summarise"]

PACKAGE = "g2g-fscil"
NAMES = {
    "ncm": "NCM",
    "teen": "TEEN",
    "v2v": "V2V (C-FSCIL)",
    "v2v_mode1": "V2V mode 1 (no retraining)",
    "v2v_mode2": "V2V mode 2 (retrain+bipolar)",
    "v2v_mode3": "V2V mode 3 (retrain+nudge)",
    "g2g": "G2G (full)",
    "g2g_no_lgp": "G2G w/o LGP",
    "g2g_no_cag2g": "G2G w/o CAG2G",
    "g2g_plain": "G2G (no LGP/CAG2G)",
    "g2g_lgp_preserve": "G2G, LGP preserve",
    "g2g_lgp_image_centred": "G2G, LGP image-centred",
    "g2g_anti_collapse": "G2G, LGP anti_collapse",
    "g2g_node_only": "G2G nodes only",
    "g2g_edge_only": "G2G edges only",
    "g2g_split": "G2G, node_dim=split",
}
_KEYS = ("avg", "pd", "last", "hm_last", "collapse", "backbone_collapse", "shared_energy")


def run_seed(cfg: ExperimentConfig, seed: int, bound: bool = True) -> dict[str, dict]:
    """Every variant of ``cfg.variants`` on one seed (percent); ``"bounds"`` holds floor and upper bound."""
    data = load_fscil_data(dataclasses.replace(cfg, split_seed=seed))
    seed_everything(seed)
    net = build_model(data, dataclasses.replace(cfg.model, seed=seed))
    pretrain_from_config(net, data, cfg, seed, "cpu")
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out: dict[str, dict] = {}
    cache: dict = {}
    for v in cfg.variants:
        method, vcfg = variant_config(cfg, v)
        rep, _ = run_fscil(data, vcfg, method, seed, pretrained=state, meta_cache=cache)
        out[v] = {
            "accs": [100 * a for a in rep.accs],
            "avg": 100 * rep.avg,
            "pd": 100 * rep.pd,
            "last": 100 * rep.last,
            "hm_last": 100 * rep.extra["hm"][-1],
            "collapse": rep.extra["collapse"][0],
            "backbone_collapse": rep.extra["backbone_collapse"][0],
            "shared_energy": rep.extra["shared_energy"][0],
            "backbone_unchanged": rep.extra.get("backbone_unchanged", True),
        }
    seen = [len(data.split.seen_classes(t)) for t in range(len(data.split))]
    out["bounds"] = {"chance": [100.0 / k for k in seen]}
    out["lgp_targets"] = lgp_targets(net, data)
    if bound:
        out["bounds"]["joint_last"] = 100 * joint_bound(data, cfg, seed)
    return out


@torch.no_grad()
def lgp_targets(net, data) -> dict[str, float]:
    """Mean off-diagonal entry of each LGP target graph ``B`` on the pre-trained backbone's local features
    of the base test images (what each LGP mode pulls the input graphs towards)."""
    net.eval()
    x, _ = gather(data.test, data.split.test_idx_seen(0))
    f = net.local_maps(x)
    return {
        mode: collapse_index(backbone_graph(f, mode)) for mode in ("preserve", "centred", "image_centred")
    }


def _std(xs: list[float]) -> float:
    if any(math.isnan(x) for x in xs):
        return float("nan")
    return float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def summarise(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Mean and standard deviation (ddof=1) over seeds of every variant's numbers."""
    out = {}
    for m in (k for k in per_seed[0] if k not in ("bounds", "lgp_targets")):
        rows = [r[m] for r in per_seed]
        n_sess = len(rows[0]["accs"])
        out[m] = {
            "accs_mean": [statistics.fmean(r["accs"][t] for r in rows) for t in range(n_sess)],
            "accs_std": [_std([r["accs"][t] for r in rows]) for t in range(n_sess)],
        }
        for k in _KEYS:
            out[m][k] = statistics.fmean(r[k] for r in rows)
            out[m][k + "_std"] = _std([r[k] for r in rows])
        out[m]["backbone_unchanged"] = all(r["backbone_unchanged"] for r in rows)
    return out


def _paired(claim, a, b, key, per_seed, seeds, op, margin=0.0):
    ma, mb = [r[a][key] for r in per_seed], [r[b][key] for r in per_seed]
    wins = len(seeds) // 2 + 1  # a majority of the seeds must agree with the mean
    return Claim.paired_compare(claim, NAMES[a], ma, NAMES[b], mb, op, margin, min_wins=wins, seeds=seeds)


def build_claims(summary: dict[str, dict], per_seed: list[dict[str, dict]], seeds: list[int]) -> list[Claim]:
    """The claims of the module docstring, computed from the per-seed numbers (accuracies in percent)."""
    claims, have = [], set(summary)
    if {"g2g", "g2g_no_lgp"} <= have:
        claims.append(_paired(
            "(a) LGP (default, centred) lowers the collapse index after meta-training",
            "g2g", "g2g_no_lgp", "collapse", per_seed, seeds, "<",
        ))  # fmt: skip
        claims.append(_paired(
            "(a-cost) LGP costs at most 1 point of average session accuracy",
            "g2g", "g2g_no_lgp", "avg", per_seed, seeds, ">=", -1.0,
        ))  # fmt: skip
    for variant, label in (
        ("g2g_lgp_preserve", "LGP preserve (uncentred backbone graph)"),
        ("g2g_lgp_image_centred", "LGP image-centred"),
        ("g2g_anti_collapse", "LGP anti_collapse"),
    ):
        if {variant, "g2g_no_lgp"} <= have:
            claims.append(_paired(
                f"(a') {label} lowers the collapse index", variant, "g2g_no_lgp", "collapse", per_seed, seeds, "<",
            ))  # fmt: skip
    v2vs = [m for m in ("v2v_mode3", "v2v_mode1", "v2v_mode2", "v2v") if m in have]
    for v2v in v2vs if "g2g" in have else []:
        claims.append(_paired(
            f"(b) G2G average session accuracy >= {NAMES[v2v]} - 1 point", "g2g", v2v, "avg",
            per_seed, seeds, ">=", -1.0,
        ))  # fmt: skip
        claims.append(_paired(
            f"paper direction: G2G average session accuracy > {NAMES[v2v]}", "g2g", v2v, "avg",
            per_seed, seeds, ">",
        ))  # fmt: skip
        claims.append(_paired(
            f"paper direction: G2G performance drop < {NAMES[v2v]}", "g2g", v2v, "pd", per_seed, seeds, "<",
        ))  # fmt: skip
    if "ncm" in have:
        for m in ["g2g", *v2vs]:
            if m not in have:
                continue
            s, n = summary[m], summary["ncm"]
            claims.append(
                Claim.check(
                    f"(c) {NAMES[m]} beats NCM without meta-training on PD or average accuracy "
                    f"(avg {s['avg']:.2f} vs {n['avg']:.2f}, PD {s['pd']:.2f} vs {n['pd']:.2f})",
                    NAMES[m],
                    bool(s["avg"] > n["avg"] or s["pd"] < n["pd"]),
                    "NCM",
                )
            )
    frozen = all(v.get("backbone_unchanged", True) for v in summary.values())
    claims.append(Claim.check("backbone bitwise unchanged by the incremental sessions", "all", frozen))
    return claims


def _bounds(per_seed: list[dict]) -> dict:
    out = {"chance": per_seed[0]["bounds"]["chance"]}
    for mode in per_seed[0]["lgp_targets"]:
        out[f"lgp_target_{mode}"] = statistics.fmean(r["lgp_targets"][mode] for r in per_seed)
    joint = [r["bounds"]["joint_last"] for r in per_seed if "joint_last" in r["bounds"]]
    if joint:
        out["joint_last"], out["joint_last_std"] = statistics.fmean(joint), _std(joint)
    return out


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: ExperimentConfig | None = None) -> QuickResult:
    """Run the shipped ``quick`` config (``quick_full`` with ``quick=False``); plots go to ``out_dir``."""
    cfg = cfg or preset("quick" if quick else "quick_full")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    per_seed = [run_seed(cfg, s) for s in cfg.seeds]
    summary = summarise(per_seed)
    bounds = _bounds(per_seed)
    claims = build_claims(summary, per_seed, list(cfg.seeds))
    plots = []
    series = {NAMES[m]: s["accs_mean"] for m, s in summary.items()}
    if "joint_last" in bounds:
        n = len(bounds["chance"])
        series["joint training (upper bound, last session)"] = [float("nan")] * (n - 1) + [
            bounds["joint_last"]
        ]
    series["chance (floor)"] = bounds["chance"]
    p = line_plot(
        series,
        out_dir / f"{PACKAGE}_session_accuracy.png",
        "session",
        "top-1 accuracy on seen classes (%)",
        f"digits FSCIL, mean over {len(cfg.seeds)} seeds",
        std={NAMES[m]: s["accs_std"] for m, s in summary.items()},
    )
    plots.append(p.name)
    coll = {
        NAMES[m]: (s["collapse"], s["collapse_std"])
        for m, s in summary.items()
        if m.startswith(("g2g", "v2v"))
    }
    if coll:
        p = bar_plot(
            coll,
            out_dir / f"{PACKAGE}_collapse_index.png",
            "collapse index (mean off-diag A)",
            "local-feature collapse after meta-training",
        )
        plots.append(p.name)
    failed = [c.claim for c in claims if not c.holds]
    notes = (
        "Digits 8x8, TinyConvNet, M=4 local nodes. Accuracies in percent; collapse index = mean off-diagonal "
        "cosine between the 4 projected local features of base-class test images after meta-training. "
        f"Floor: chance {', '.join(f'{v:.1f}' for v in bounds['chance'])} per session"
        + (
            f"; upper bound: joint CE training on all classes {bounds['joint_last']:.2f} +- "
            f"{bounds['joint_last_std']:.2f} at the last session. "
            if "joint_last" in bounds
            else ". "
        )
        + ("All claims hold." if not failed else f"Claims that do NOT hold: {failed}.")
    )
    if "g2g" in summary and not math.isnan(summary["g2g"]["backbone_collapse"]):
        notes += (
            f" Backbone local-graph collapse index (post-ReLU features, uncentred): "
            f"{summary['g2g']['backbone_collapse']:.3f}."
        )
    metrics = {"summary": summary, "bounds": bounds, "per_seed": per_seed, "config": dataclasses.asdict(cfg)}
    return QuickResult(
        package=PACKAGE,
        command="uv run reproduce g2g-fscil" + ("" if quick else " --full"),
        dataset="sklearn digits (6 base classes + 2 sessions of 2-way 5-shot)",
        seeds=list(cfg.seeds),
        metrics=metrics,
        claims=claims,
        device="cpu",
        plots=plots,
        notes=notes,
    )
