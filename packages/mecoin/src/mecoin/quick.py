"""Quick reproduction: graph few-shot class-incremental learning on a contextual SBM, offline, on CPU.

Everything comes from the shipped ``quick`` config (``mecoin show-config --config quick``): a CSBM graph
with 12 classes x 80 nodes, 6 base classes, then 3 sessions of 2-way 5-shot; a GCN (h = 32) pre-trained
on the base classes and frozen; Mecoin with C = 16 codebooks of P = 64 keys. Every method runs on the
same runner, split and encoder (clean split, unseen classes masked).

Choices made before Mecoin's numbers on this graph were seen (ours):

* the graph (``mean_sep``, ``p_out``) is the first of a fixed list of candidates on which the linear probe
  of the frozen encoder reaches >= 70 % on the novel classes (``benchmarks/select_demo_graph.py``; only
  the probe, NCM and Joint were run to choose it);
* the memory budget: Adam moves a value by about ``lr`` per step, so the official 2000 epochs at
  lr 5e-4 are matched by 200 epochs at lr 5e-3 (``benchmarks/quick_budget.py`` measures both);
* the lower bound is Finetune without best-validation selection (``finetune_last``: the head is trained on
  each session's supports and kept as it ends), the plain fine-tuning lower bound of continual graph
  learning (CGLB's "bare" model). Finetune with selection (``finetune``) is reported beside it: choosing the
  state by a validation set that is mostly old classes is itself a guard against forgetting.

Claims (paired over the seeds, each must also hold on a majority of seeds): against Finetune without
selection, Mecoin's performance drop PD is more than 10 points lower, its final accuracy is higher, and
its forgetting is lower. Printed beside them: the Joint upper bound (head trained on all base nodes and
every support) and the linear-probe bound (every label, cross-fitted), and Frozen-NCM.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from mecoin.config import ExperimentConfig
from mecoin.data import build_task
from mecoin.experiment import build_method, summarize
from mecoin.trainer import pretrain_task, run_method
from papers_shared.cli import resolve_config
from papers_shared.config import config_to_dict, from_dict, load_config
from papers_shared.metrics import RunReport
from papers_shared.pools import stop_pool
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot

__all__ = [
    "EXTRA_VARIANTS",
    "LOWER_BOUND",
    "build_claims",
    "quick_config",
    "quick_reproduction",
    "run_variants",
]

#: The lower bound the claims use (see the module docstring).
LOWER_BOUND = "finetune_last"
#: Mecoin variants run besides the config's methods: label -> (method, config edits). Reported, not claimed.
EXTRA_VARIANTS: dict[str, tuple[str, dict]] = {
    "mecoin (no replay)": ("mecoin", {"mecoin": {"replay_supports": False}}),
}


def quick_config() -> ExperimentConfig:
    """The shipped ``quick`` config (the one source of the quick run's settings)."""
    return load_config(ExperimentConfig, resolve_config("mecoin", "quick"))


def _edit(cfg: ExperimentConfig, edits: dict) -> ExperimentConfig:
    data = config_to_dict(cfg)
    for section, values in edits.items():
        data[section] = {**data[section], **values}
    return from_dict(ExperimentConfig, data)


def _run_seed(cfg: ExperimentConfig, seed: int, variants: dict[str, tuple[str, dict]]) -> list[RunReport]:
    """Every variant on one seed; the task and the pre-trained encoder are shared by the variants."""
    device = torch.device(cfg.device)
    task = build_task(cfg, seed)
    pretrained = pretrain_task(task, cfg, seed, device)
    out = []
    for label, (method, edits) in variants.items():
        vcfg = _edit(cfg, edits)
        rep = run_method(task, pretrained, vcfg, build_method(method, vcfg, seed), seed, device)
        rep.method = label
        out.append(rep)
    return out


def _init_worker() -> None:
    """A worker computes like the parent: one thread, deterministic kernels (each seed seeds itself)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def run_variants(
    cfg: ExperimentConfig, seeds: list[int], variants: dict[str, tuple[str, dict]], workers: int = 1
) -> dict[str, list[RunReport]]:
    """Every variant on every seed. With ``workers > 1`` the seeds run in that many processes; a seed's
    numbers do not depend on where it runs (every generator is seeded from it, one thread each)."""
    if workers > 1 and len(seeds) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(min(workers, len(seeds)), mp_context=ctx, initializer=_init_worker)
        try:
            per_seed = list(pool.map(_run_seed, [cfg] * len(seeds), seeds, [variants] * len(seeds)))
        except BaseException:  # Ctrl-C or a failure: cancel the rest instead of awaiting it
            stop_pool(pool)
            raise
        pool.shutdown()
    else:
        per_seed = [_run_seed(cfg, seed, variants) for seed in seeds]
    return {label: [reps[i] for reps in per_seed] for i, label in enumerate(variants)}


def build_claims(summary: dict) -> list[Claim]:
    """The stated claims, from the per-seed numbers of the summary (percent)."""
    m, f = summary["mecoin"], summary[LOWER_BOUND]
    n = len(m["pd_per_seed"])
    majority = n // 2 + 1
    lower = "Finetune without selection"
    seeds = m["seeds"]
    return [
        Claim.paired_compare(
            f"PD: Mecoin < {lower} - 10 points",
            "mecoin", m["pd_per_seed"], LOWER_BOUND, f["pd_per_seed"], "<", -10.0, majority, seeds,
        ),
        Claim.paired_compare(
            f"final accuracy: Mecoin > {lower}",
            "mecoin", m["last_per_seed"], LOWER_BOUND, f["last_per_seed"], ">", 0.0, majority, seeds,
        ),
        Claim.paired_compare(
            f"forgetting: Mecoin < {lower}",
            "mecoin", m["forgetting_per_seed"], LOWER_BOUND, f["forgetting_per_seed"], "<", 0.0, majority,
            seeds,
        ),
    ]  # fmt: skip


def _groups(reports: list[RunReport]) -> dict[str, float]:
    """Mean over seeds of the last accuracy-matrix row: base group and mean of the novel groups (percent)."""
    base = [r.acc_matrix[-1][0] for r in reports]
    novel = [sum(r.acc_matrix[-1][1:]) / max(len(r.acc_matrix[-1]) - 1, 1) for r in reports]
    return {"base": 100 * sum(base) / len(base), "novel": 100 * sum(novel) / len(novel)}


def _notes(summary: dict, groups: dict, claims: list[Claim], cfg: ExperimentConfig) -> str:
    m, lo, sel = summary["mecoin"], summary[LOWER_BOUND], summary["finetune"]

    def row(k: str) -> str:
        s = summary[k]
        return f"{k} last {s['last']:.1f} PD {s['pd']:.1f} (base {groups[k]['base']:.1f} / novel {groups[k]['novel']:.1f})"

    held = [c.claim for c in claims if c.holds]
    failed = [c.claim for c in claims if not c.holds]
    return (
        f"Mecoin PD {m['pd']:.1f} vs Finetune without selection {lo['pd']:.1f} (with selection "
        f"{sel['pd']:.1f}); final accuracy {m['last']:.1f} vs {lo['last']:.1f} ({sel['last']:.1f}); "
        f"forgetting {m['forgetting']:.1f} vs {lo['forgetting']:.1f}. Bounds beside them: "
        + "; ".join(row(k) for k in ("joint", "probe", "ncm", "mecoin"))
        + f". Mecoin budget: {cfg.mecoin.epochs_per_session} epochs per session at lr {cfg.mecoin.lr:g} "
        "(the official 2000 epochs at 5e-4 move the memory values as far; both measured by "
        "benchmarks/quick_budget.py). Graph chosen by the probe bound before Mecoin ran on it "
        "(benchmarks/select_demo_graph.py). "
        f"Holds: {held or 'none'}. Does not hold: {failed or 'none'}."
    )


def quick_reproduction(out_dir: Path, quick: bool = True) -> QuickResult:
    """Run the quick experiment (the config's seeds; 10 seeds with ``quick=False``), write the plots,
    return the numbers."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = quick_config()
    seeds = list(cfg.seeds) if quick else list(range(10))
    variants = {m: (m, {}) for m in cfg.methods}
    variants.update(EXTRA_VARIANTS)
    threads = torch.get_num_threads()
    # Graphs of 960 nodes: one thread per seed is fastest and immune to OpenMP contention; the runner's
    # thread budget is spent on seeds in parallel instead (the numbers do not depend on it).
    torch.set_num_threads(1)
    try:
        reports = run_variants(cfg, seeds, variants, workers=max(1, min(threads, os.cpu_count() or 1)))
    finally:
        torch.set_num_threads(threads)
    summary = summarize([r for reps in reports.values() for r in reps])
    claims = build_claims(summary)
    groups = {k: _groups(v) for k, v in reports.items()}
    m = summary["mecoin"]
    metrics = {
        "summary": summary,
        "last_row_base_vs_novel": groups,
        "bounds": {
            "joint_last": summary["joint"]["last"],
            "probe_last": summary["probe"]["last"],
            "probe_novel": groups["probe"]["novel"],
            "ncm_last": summary["ncm"]["last"],
        },
        "lower_bound": LOWER_BOUND,
        "finetune_selection_effect_pd": summary["finetune"]["pd"] - summary[LOWER_BOUND]["pd"],
        "mecoin_no_replay_pd": summary["mecoin (no replay)"]["pd"],
        "acc_matrix_mecoin_seed0": reports["mecoin"][0].acc_matrix,
        "acc_matrix_finetune_last_seed0": reports[LOWER_BOUND][0].acc_matrix,
        "memory_bytes_mecoin": reports["mecoin"][0].extra["memory_bytes"],
        "budget": {"epochs_per_session": cfg.mecoin.epochs_per_session, "lr": cfg.mecoin.lr},
        "graph": config_to_dict(cfg.csbm),
    }
    sessions = list(range(len(m["accs_mean"])))
    plots = [
        line_plot(
            {k: s["accs_mean"] for k, s in summary.items()},
            out_dir / "mecoin_sessions.png",
            xlabel="session",
            ylabel="accuracy on all seen classes (%)",
            title=f"CSBM GFSCIL, mean ± std over {len(seeds)} seeds",
            x=sessions,
            std={k: s["accs_std"] for k, s in summary.items()},
        ).name,
        bar_plot(
            {k: (s["pd"], s["pd_std"]) for k, s in summary.items()},
            out_dir / "mecoin_pd.png",
            ylabel="performance drop PD (points)",
            title="PD = acc(session 0) - acc(last session)",
        ).name,
    ]
    return QuickResult(
        package="mecoin",
        command="uv run reproduce mecoin",
        dataset=(
            f"CSBM ({cfg.csbm.num_classes} classes x {cfg.csbm.nodes_per_class} nodes, mean_sep "
            f"{cfg.csbm.mean_sep:g}, p_out {cfg.csbm.p_out:g}; {cfg.protocol.base_classes} base + "
            f"{cfg.protocol.num_sessions} sessions of {cfg.protocol.ways}-way {cfg.protocol.shots}-shot)"
        ),
        seeds=seeds,
        metrics=metrics,
        claims=claims,
        device="cpu",
        runtime_s=round(time.perf_counter() - t0, 2),
        plots=plots,
        notes=_notes(summary, groups, claims, cfg),
    )
