"""Quick reproduction (``ofs-dpo quick`` = ``uv run reproduce ofs-dpo``): the shipped ``quick`` config on CPU.

Design (ours; written before the first measurement of this version). The previous toy (beta 0.1) gave
sequential OFS-DPO and DPO identical metrics: with small margins the chase gradient is nearly proportional to
DPO's, and Adam cancels the scale. The paper's argument (arXiv 2406.05534, Sec. 3: DPO's gradient vanishes as
margins grow; the fast-slow chase keeps a non-vanishing gradient) needs a stream on which margins *saturate*.

- Toy domain A (chosen continuations use even token indices, rejected the adjacent odd ones) then B (prefers
  indices < V/2); tiny GPT2Config, LoRA r 8 on ``c_attn``, 512 pairs per domain streamed once in batches of 4
  (128 steps; 128 held-out pairs), fast lr 1e-3, slow/fast ratio 0.1, alpha 1, K 10, all from ``configs/quick.yaml``.
- **beta = 1** (ten times trl's default) so that ``h = beta * log-ratio margin`` leaves the linear regime within
  the stream: DPO's per-pair weight ``sigma(-h)`` falls far below 0.5 while the chase weight
  ``sigma(-(h_L - h_C))`` stays near 0.5 as long as the chaser keeps up. Then the leader's per-pair weighting
  differs from DPO's (not just its scale), so Adam cannot cancel it.
- In-domain (A): DPO (trl ``DPOTrainer``), OFS-DPO (leader), and the **chase-weight-0 ablation** (OFS-DPO with
  alpha = 0: two independent DPO learners, the one with the lower loss reported). Continuous metric: the
  held-out DPO loss ``mean -log sigma(h)`` of the evaluated adapter (accuracy saturates on this toy). Also:
  held-out accuracy, even-token fraction of greedy samples, gradient weights and the fast-slow gap
  ``mean(h_L - h_C)`` on a probe set every 16 steps, and role swaps per role check.
- Cross-domain (A then B): sequential DPO, sequential OFS-DPO, COFS-DPO (uniform weights, ``param`` space, warm
  start), and joint DPO on A + B (upper bound, not continual). Forgetting on A: drop of accuracy and rise of the
  held-out DPO loss between the end of A and the end of B.
- Bounds printed beside the numbers: the perfect separator (loss 0, accuracy 1) is the floor; the untrained
  reference policy has loss log 2 = 0.693 and accuracy 0 (ties count as wrong); joint DPO is the upper bound
  of the continual methods.

Claims (predictions fixed before measuring; each over every seed with paired differences):
  1. the chase term changes the trajectory: OFS-DPO's held-out loss differs from the alpha = 0 ablation's by
     more than 1 % in every seed;
  2. OFS-DPO's held-out loss <= DPO's (mean, and in a majority of seeds);
  3. OFS-DPO's held-out accuracy >= DPO's - 0.02;
  4. DPO's gradient weight sigma(-h) decays (end < start, every seed);
  5. at the end, OFS's chase weight > DPO's weight (every seed);
  6. the chase weight stays within [0.3, 0.7] (the chaser keeps up);
  7. COFS-DPO's accuracy forgetting on A <= sequential DPO's; 8. its loss forgetting < sequential DPO's (majority);
  9. COFS-DPO's final accuracy on A >= sequential DPO's; 10. on B within 0.1 of it;
  11. COFS-DPO's final average >= sequential DPO's and 12. >= sequential OFS-DPO's.
Stage A of the continual runs *is* the in-domain run (same seed, data, settings): trained once, then branched.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofs_dpo.config import ExperimentConfig
from ofs_dpo.evaluation import generate_completions, pair_margins
from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot

__all__ = ["build_claims", "even_fraction", "quick_config", "quick_reproduction"]

PACKAGE = "ofs-dpo"
REFERENCE_LOSS = math.log(2.0)  # the untrained policy: h = 0 on every pair
IN_DOMAIN = ("dpo", "ofs", "ofs_alpha0")
CROSS = ("seq_dpo", "seq_ofs", "cofs", "joint_dpo")


def quick_config(**overrides: Any) -> ExperimentConfig:
    """The shipped ``quick`` config (one source of truth for the YAML and this run), with overrides."""
    return load_config(ExperimentConfig, resolve_config("ofs_dpo", "quick"), overrides)


def even_fraction(model: Any, tokenizer: Any, prompts: list[str], length: int = 6) -> float:
    """Fraction of even-index content tokens among the first ``length`` greedy tokens (missing tokens count 0)."""
    outs = generate_completions(model, tokenizer, prompts, max_new_tokens=length, batch_size=64)
    hits = 0
    for text in outs:
        toks = [t for t in text.split() if t.startswith("t") and t[1:].isdigit()][:length]
        hits += sum(int(t[1:]) % 2 == 0 for t in toks)
    return hits / (length * len(prompts))


@contextlib.contextmanager
def _quiet_single_thread():
    import logging
    import warnings

    import datasets

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threading overhead dominates
    datasets.disable_progress_bars()
    level = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            torch.set_num_threads(n)
            logging.getLogger("transformers").setLevel(level)


def _metric_fns(beta: float, prompts_a: list[str]) -> dict[str, Any]:
    def dpo_loss(pm, tok, domain, ds):
        h = pair_margins(pm, ds, tok, ["default"], beta)["default"]
        return float(torch.nn.functional.softplus(-h).mean())

    def even(pm, tok, domain, ds):
        return even_fraction(pm, tok, prompts_a) if domain == "toy_a" else math.nan

    return {"dpo_loss": dpo_loss, "even_fraction": even}


def _runner(cfg: ExperimentConfig, method: str, seed: int, data: dict, out_dir: Path, prompts_a, **over):
    from ofs_dpo.cofs import ContinualRunner
    from ofs_dpo.experiment import build_model_and_tokenizer, lora_config_from, make_args

    model, tok = build_model_and_tokenizer(cfg, seed)
    args = make_args(cfg, out_dir / f"seed{seed}-{method}{'-a0' if over else ''}", seed, **over)
    return ContinualRunner(
        model,
        tok,
        lora_config_from(cfg),
        args,
        method=method,
        probe_dataset=data["toy_a"]["test"].select(range(64)),
        probe_every=cfg.probe_every,
        metric_fns=_metric_fns(cfg.train.beta, prompts_a),
        quiet=True,
    )


def _one_seed(cfg: ExperimentConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    from ofs_dpo.data import toy_domains

    d = cfg.data
    data = toy_domains(d.domains, n_train=d.n_train, n_eval=d.n_eval, vocab_size=d.toy_vocab, seed=seed)
    evals = {k: v["test"] for k, v in data.items()}
    prompts_a = list(data["toy_a"]["test"]["prompt"][:64])
    runners = {
        "dpo": _runner(cfg, "seq_dpo", seed, data, out_dir, prompts_a),
        "ofs": _runner(cfg, "seq_ofs", seed, data, out_dir, prompts_a),
        "ofs_alpha0": _runner(cfg, "seq_ofs", seed, data, out_dir, prompts_a, chase_alpha=0.0),
    }
    in_domain = {}
    for name, r in runners.items():
        res = r.fit_domain("toy_a", data["toy_a"]["train"], evals)
        in_domain[name] = {
            "accuracy": res.scores["toy_a"],
            "dpo_loss": res.extra["dpo_loss/toy_a"],
            "even_fraction": res.extra["even_fraction/toy_a"],
            "probe": res.probe,
            "leader": res.leader,
            **res.chasing,
        }
    cross_runners = {
        "seq_dpo": runners["dpo"],
        "seq_ofs": runners["ofs"],
        "cofs": runners["ofs"].branch("cofs"),
        "joint_dpo": runners["dpo"].branch("joint_dpo", _joint_pool=[data["toy_a"]["train"]]),
    }
    cross = {}
    for name, r in cross_runners.items():
        r.probe_dataset = None
        r.metric_fns = {"dpo_loss": r.metric_fns["dpo_loss"]}
        res = r.fit_domain("toy_b", data["toy_b"]["train"], evals)
        cross[name] = {
            **r.summary(),
            "dpo_loss_a": [r.results[0].extra["dpo_loss/toy_a"], res.extra["dpo_loss/toy_a"]],
            "dpo_loss_b": res.extra["dpo_loss/toy_b"],
        }
    return {"in_domain": in_domain, "cross_domain": cross}


def _paired(claim, method, mv, baseline, bv, op, margin=0.0, wins="all", seeds=None) -> Claim:
    n = len(mv)
    need = n if wins == "all" else n // 2 + 1
    return Claim.paired_compare(claim, method, mv, baseline, bv, op, margin, min_wins=need, seeds=seeds)


def build_claims(per_seed: list[dict[str, Any]], seeds: list[int] | None = None) -> tuple[list[Claim], dict]:
    """The twelve predictions of the module docstring as claims on the measured per-seed numbers."""
    ind = [s["in_domain"] for s in per_seed]
    cr = [s["cross_domain"] for s in per_seed]

    def col(method: str, key: str) -> list[float]:
        return [float(s[method][key]) for s in ind]

    loss = {m: col(m, "dpo_loss") for m in IN_DOMAIN}
    acc = {m: col(m, "accuracy") for m in IN_DOMAIN}
    w_start = [s["dpo"]["probe"][0]["grad_weight_dpo"] for s in ind]
    w_end = [s["dpo"]["probe"][-1]["grad_weight_dpo"] for s in ind]
    chase = [[p["grad_weight_chase"] for p in s["ofs"]["probe"]] for s in ind]
    gap = [[p["margin_gap"] for p in s["ofs"]["probe"]] for s in ind]
    chase_min, chase_max = min(min(c) for c in chase), max(max(c) for c in chase)
    diff_a0 = [abs(a - b) for a, b in zip(loss["ofs"], loss["ofs_alpha0"])]

    def final(m: str, j: int) -> list[float]:
        return [float(c[m]["matrix"][-1][j]) for c in cr]

    def stat(m: str, key: str) -> list[float]:
        return [float(c[m][key]) for c in cr]

    def loss_forgetting(m: str) -> list[float]:
        return [c[m]["dpo_loss_a"][1] - c[m]["dpo_loss_a"][0] for c in cr]

    kw = {"seeds": seeds}
    claims = [
        _paired(
            "in-domain: the chase term changes the trajectory: |loss(OFS) - loss(alpha=0)| > 1% of alpha=0's",
            "|OFS - alpha0| loss",
            diff_a0,
            "1% of alpha0 loss",
            [0.01 * v for v in loss["ofs_alpha0"]],
            ">",
            **kw,
        ),
        _paired(
            "in-domain: OFS-DPO held-out DPO loss <= DPO's",
            "OFS-DPO",
            loss["ofs"],
            "DPO",
            loss["dpo"],
            "<=",
            wins="majority",
            **kw,
        ),
        _paired(
            "in-domain: OFS-DPO held-out accuracy >= DPO - 0.02",
            "OFS-DPO",
            acc["ofs"],
            "DPO",
            acc["dpo"],
            ">=",
            -0.02,
            wins="majority",
            **kw,
        ),
        _paired(
            "in-domain: DPO gradient weight sigma(-h) decays",
            "DPO end",
            w_end,
            "DPO start",
            w_start,
            "<",
            **kw,
        ),
        _paired(
            "in-domain: at the end, OFS chase weight sigma(-(h_L-h_C)) > DPO weight sigma(-h)",
            "OFS chase weight",
            [c[-1] for c in chase],
            "DPO weight",
            w_end,
            ">",
            **kw,
        ),
        Claim.compare(
            "in-domain: OFS chase weight stays >= 0.3", "min chase weight", chase_min, "bound", 0.3, ">="
        ),
        Claim.compare(
            "in-domain: OFS chase weight stays <= 0.7", "max chase weight", chase_max, "bound", 0.7, "<="
        ),
        _paired(
            "cross-domain: COFS-DPO accuracy forgetting on A <= sequential DPO's",
            "COFS-DPO",
            stat("cofs", "forgetting"),
            "seq DPO",
            stat("seq_dpo", "forgetting"),
            "<=",
            wins="majority",
            **kw,
        ),
        _paired(
            "cross-domain: COFS-DPO loss forgetting on A (rise of held-out DPO loss) < sequential DPO's",
            "COFS-DPO",
            loss_forgetting("cofs"),
            "seq DPO",
            loss_forgetting("seq_dpo"),
            "<",
            wins="majority",
            **kw,
        ),
        _paired(
            "cross-domain: COFS-DPO final accuracy on A >= sequential DPO",
            "COFS-DPO",
            final("cofs", 0),
            "seq DPO",
            final("seq_dpo", 0),
            ">=",
            wins="majority",
            **kw,
        ),
        _paired(
            "cross-domain: COFS-DPO final accuracy on B within 0.1 of sequential DPO",
            "COFS-DPO",
            final("cofs", 1),
            "seq DPO",
            final("seq_dpo", 1),
            ">=",
            -0.1,
            wins="majority",
            **kw,
        ),
        _paired(
            "cross-domain: COFS-DPO final average >= sequential DPO",
            "COFS-DPO",
            stat("cofs", "final_avg"),
            "seq DPO",
            stat("seq_dpo", "final_avg"),
            ">=",
            wins="majority",
            **kw,
        ),
        _paired(
            "cross-domain: COFS-DPO final average >= sequential OFS-DPO",
            "COFS-DPO",
            stat("cofs", "final_avg"),
            "seq OFS-DPO",
            stat("seq_ofs", "final_avg"),
            ">=",
            wins="majority",
            **kw,
        ),
    ]
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    swaps = [s["ofs"]["num_swaps"] for s in ind]
    checks = [s["ofs"]["num_checks"] for s in ind]
    summary = {
        "bounds": {
            "floor_dpo_loss": 0.0,
            "floor_accuracy": 1.0,
            "reference_policy_dpo_loss": REFERENCE_LOSS,
            "reference_policy_accuracy": 0.0,
            "upper_bound_cross_domain": "joint_dpo (multi-task DPO on A + B)",
        },
        "in_domain": {
            "dpo_loss": {m: mean(v) for m, v in loss.items()},
            "accuracy": {m: mean(v) for m, v in acc.items()},
            "even_fraction": {m: mean(col(m, "even_fraction")) for m in IN_DOMAIN},
            "dpo_grad_weight_start_end": [mean(w_start), mean(w_end)],
            "chase_weight_range": [chase_min, chase_max],
            "fast_slow_gap_end": mean([g[-1] for g in gap]),
            "fast_slow_gap_max": max(max(g) for g in gap),
            "role_swaps_per_check": sum(swaps) / max(1, sum(checks)),
            "role_swaps": swaps,
            "ofs_final_leader": [s["ofs"]["leader"] for s in ind],
        },
        "cross_domain": {
            m: {
                "final_accuracy_A": mean(final(m, 0)),
                "final_accuracy_B": mean(final(m, 1)),
                "final_avg": mean(stat(m, "final_avg")),
                "forgetting": mean(stat(m, "forgetting")),
                "loss_forgetting_A": mean(loss_forgetting(m)),
                "final_dpo_loss_B": mean([c[m]["dpo_loss_b"] for c in cr]),
            }
            for m in CROSS
        },
    }
    return claims, summary


def _curve(per_seed: list[dict[str, Any]], method: str, key: str) -> list[float]:
    rows = [[p[key] for p in s["in_domain"][method]["probe"]] for s in per_seed]
    return [float(np.mean(v)) for v in zip(*rows)]


def _plots(per_seed: list[dict[str, Any]], out_dir: Path) -> list[str]:
    labels = {"seq_dpo": "seq. DPO", "seq_ofs": "seq. OFS-DPO", "cofs": "COFS-DPO", "joint_dpo": "joint DPO"}

    def bar(stage: int, j: int) -> dict[str, tuple[float, float]]:
        vals = {m: [s["cross_domain"][m]["matrix"][stage][j] for s in per_seed] for m in labels}
        return {labels[m]: (float(np.mean(v)), float(np.std(v))) for m, v in vals.items()}

    groups = {"domain A (after A)": bar(0, 0), "domain A (after B)": bar(1, 0), "domain B": bar(1, 1)}
    acc = f"{PACKAGE}_per_domain_accuracy.png"
    bar_plot({}, out_dir / acc, "held-out reward accuracy", "toy A -> B: accuracy per domain", groups=groups)
    steps = [p["step"] for p in per_seed[0]["in_domain"]["dpo"]["probe"]]
    gw = f"{PACKAGE}_grad_weights.png"
    line_plot(
        {
            "DPO  sigma(-h)": _curve(per_seed, "dpo", "grad_weight_dpo"),
            "OFS leader  sigma(-h_L)": _curve(per_seed, "ofs", "grad_weight_dpo"),
            "OFS chase  sigma(-(h_L-h_C))": _curve(per_seed, "ofs", "grad_weight_chase"),
            "alpha=0 leader  sigma(-h_L)": _curve(per_seed, "ofs_alpha0", "grad_weight_dpo"),
        },
        out_dir / gw,
        "optimiser step",
        "mean gradient weight (probe set)",
        "toy A, beta 1: per-pair gradient weights",
        x=steps,
    )
    gap = f"{PACKAGE}_fast_slow_gap.png"
    line_plot(
        {
            "OFS-DPO (alpha 1)": _curve(per_seed, "ofs", "margin_gap"),
            "alpha = 0 ablation": _curve(per_seed, "ofs_alpha0", "margin_gap"),
        },
        out_dir / gap,
        "optimiser step",
        "mean h_L - h_C (probe set)",
        "toy A: fast-slow (leader-chaser) margin gap",
        x=steps,
    )
    return [acc, gw, gap]


def _notes(claims: list[Claim], summary: dict[str, Any]) -> str:
    held = sum(c.holds for c in claims)
    failed = [c.claim for c in claims if not c.holds]
    ind = summary["in_domain"]
    text = (
        f"{held}/{len(claims)} claims hold. Tiny GPT2Config (2 layers, d=64), word-level toy tokenizer, LoRA r=8 on "
        "c_attn, lr 1e-3, beta 1, 128 online steps per domain, single-threaded CPU. Held-out DPO loss (A): "
        + ", ".join(f"{m} {v:.4f}" for m, v in ind["dpo_loss"].items())
        + f" (floor 0, reference policy {REFERENCE_LOSS:.4f}). Fast-slow gap at the end {ind['fast_slow_gap_end']:.3f}, "
        f"role swaps per role check {ind['role_swaps_per_check']:.3f}."
    )
    if failed:
        text += f" Claims that do not hold: {failed}."
    lo = ind["chase_weight_range"][0]
    if lo < 0.3:
        text += (
            f" Measured cause of a chase weight below 0.3: the slow chaser falls behind (gap h_L - h_C up to "
            f"{ind['fast_slow_gap_max']:.2f}), so sigma(-Delta) decays to {lo:.3f}, close to DPO's end weight "
            f"{ind['dpo_grad_weight_start_end'][1]:.3f}; roles swapped in {ind['role_swaps_per_check']:.0%} of checks."
        )
    return text


def quick_reproduction(out_dir: Path, quick: bool = True) -> QuickResult:
    """Run the shipped ``quick`` config (3 seeds; ``quick=False``: 5 seeds); write ``ofs-dpo_*.png``.

    The metrics hold no timings, so two runs on one machine give identical JSON metrics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = quick_config() if quick else quick_config(seeds=[0, 1, 2, 3, 4])
    with _quiet_single_thread():
        per_seed = [_one_seed(cfg, s, out_dir / "ofs-dpo_runs") for s in cfg.seeds]
    claims, summary = build_claims(per_seed, list(cfg.seeds))
    plots = _plots(per_seed, out_dir)
    return QuickResult(
        package=PACKAGE,
        command="ofs-dpo quick" if quick else "ofs-dpo quick --full",
        dataset="offline toy preference domains A (even tokens) then B (low tokens), in-memory tokenizer",
        seeds=list(cfg.seeds),
        metrics={"summary": summary, "per_seed": per_seed},
        claims=claims,
        device="cpu",
        plots=plots,
        notes=_notes(claims, summary),
    )
