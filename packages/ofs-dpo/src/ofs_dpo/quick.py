"""Quick reproduction (``uv run reproduce ofs-dpo``): the two toy experiments of spec §8 on CPU.

- **In-domain online alignment** (toy domain A: chosen continuations use even token indices, rejected the
  adjacent odd ones): DPO (trl ``DPOTrainer``) vs OFS-DPO (leader), same fast lr 1e-3, ratio 0.1, α 1, 1 024 pairs
  streamed once in batches of 8 (128 steps). Metrics: held-out implicit-reward accuracy, fraction of even tokens in
  greedy 6-token samples, and the gradient weights ``σ(−h)`` / ``σ(−Δ)`` on a probe set during training.
- **Cross-domain continual alignment** (A then B, B prefers indices < 20): sequential DPO, sequential OFS-DPO and
  COFS-DPO (uniform weights, ``param`` space, warm start). Metric: held-out accuracy per domain after each domain.

Stage A of the continual runs *is* the in-domain run (same seed, data and settings), so it is trained once and
the continual methods branch from it. Claims are computed from the measured numbers (``Claim.compare``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofs_dpo.config import ExperimentConfig
from ofs_dpo.evaluation import generate_completions
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot

__all__ = ["QUICK_CONFIG", "build_claims", "even_fraction", "quick_reproduction"]

PACKAGE = "ofs-dpo"

#: The toy setting of spec §8 (``configs/quick_cross_domain.yaml`` holds the same values).
QUICK_CONFIG = ExperimentConfig(
    name="quick_cross_domain",
    setting="cross_domain",
    methods=["seq_dpo", "seq_ofs", "cofs"],
    seeds=[0, 1, 2],
    output_dir="results/ofs-dpo",
    train={
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "slow_lr_ratio": 0.1,
        "chase_alpha": 1.0,
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 16,
    },
    probe_every=16,
)
QUICK_CONFIG.model.n_layer, QUICK_CONFIG.model.n_head, QUICK_CONFIG.model.n_embd = 2, 2, 64
QUICK_CONFIG.data.domains = ["toy_a", "toy_b"]
QUICK_CONFIG.data.n_train, QUICK_CONFIG.data.n_eval = 1024, 256
QUICK_CONFIG.lora.target_modules = ["c_attn"]


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
    torch.set_num_threads(1)  # tiny models: threading overhead dominates on 2 shared cores
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


def _runner(method: str, seed: int, data: dict, out_dir: Path, prompts_a: list[str]):
    from ofs_dpo.cofs import ContinualRunner
    from ofs_dpo.experiments import build_model_and_tokenizer, lora_config_from, make_args

    cfg = QUICK_CONFIG
    model, tok = build_model_and_tokenizer(cfg, seed)
    args = make_args(cfg, out_dir / f"seed{seed}-{method}", seed)
    return ContinualRunner(
        model,
        tok,
        lora_config_from(cfg),
        args,
        method=method,
        probe_dataset=data["toy_a"]["test"].select(range(64)),
        probe_every=cfg.probe_every,
        metric_fns={
            "even_fraction": lambda pm, t, d, ds: even_fraction(pm, t, prompts_a) if d == "toy_a" else 0.0
        },
        quiet=True,
    )


def _one_seed(seed: int, out_dir: Path) -> dict[str, Any]:
    from ofs_dpo.data import toy_domains

    d = QUICK_CONFIG.data
    data = toy_domains(d.domains, n_train=d.n_train, n_eval=d.n_eval, vocab_size=d.toy_vocab, seed=seed)
    evals = {k: v["test"] for k, v in data.items()}
    prompts_a = list(data["toy_a"]["test"]["prompt"][:64])
    dpo = _runner("seq_dpo", seed, data, out_dir, prompts_a)
    ofs = _runner("seq_ofs", seed, data, out_dir, prompts_a)
    in_domain = {}
    for name, r in (("dpo", dpo), ("ofs", ofs)):
        res = r.fit_domain("toy_a", data["toy_a"]["train"], evals)
        in_domain[name] = {
            "accuracy": res.scores["toy_a"],
            "even_fraction": res.extra["even_fraction/toy_a"],
            "probe": res.probe,
            "leader": res.leader,
        }
    cofs = ofs.branch("cofs")
    cross = {}
    for name, r in (("seq_dpo", dpo), ("seq_ofs", ofs), ("cofs", cofs)):
        r.metric_fns = {}
        r.probe_dataset = None
        r.fit_domain("toy_b", data["toy_b"]["train"], evals)
        cross[name] = r.summary()
    return {"in_domain": in_domain, "cross_domain": cross}


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs))


def build_claims(per_seed: list[dict[str, Any]]) -> tuple[list[Claim], dict[str, Any]]:
    """The asserted directions of spec §8 (and §5 T1/T2) as claims on the measured numbers."""
    ind = [s["in_domain"] for s in per_seed]
    acc_dpo, acc_ofs = [s["dpo"]["accuracy"] for s in ind], [s["ofs"]["accuracy"] for s in ind]
    ev_dpo, ev_ofs = [s["dpo"]["even_fraction"] for s in ind], [s["ofs"]["even_fraction"] for s in ind]
    n_even = sum(o >= d for o, d in zip(ev_ofs, ev_dpo))
    w_dpo_start = _mean([s["dpo"]["probe"][0]["grad_weight_dpo"] for s in ind])
    w_dpo_end = _mean([s["dpo"]["probe"][-1]["grad_weight_dpo"] for s in ind])
    chase = [[p["grad_weight_chase"] for p in s["ofs"]["probe"]] for s in ind]
    w_chase_end = _mean([c[-1] for c in chase])
    chase_min, chase_max = min(min(c) for c in chase), max(max(c) for c in chase)
    cr = [s["cross_domain"] for s in per_seed]

    def final(method: str, j: int) -> float:
        return _mean([c[method]["matrix"][-1][j] for c in cr])

    def stat(method: str, key: str) -> float:
        return _mean([c[method][key] for c in cr])

    n = len(per_seed)
    claims = [
        Claim.compare(
            "in-domain: OFS-DPO leader held-out reward accuracy >= DPO - 0.02 (mean over seeds)",
            "OFS-DPO",
            _mean(acc_ofs),
            "DPO",
            _mean(acc_dpo),
            ">=",
            -0.02,
        ),
        Claim.compare(
            f"in-domain: OFS-DPO even-token fraction >= DPO in >= 2 of {n} seeds (count of seeds)",
            "OFS-DPO",
            n_even,
            "required seeds",
            min(2, n),
            ">=",
        ),
        Claim.compare(
            "in-domain: DPO gradient weight mean sigma(-h) decays during training (end < start)",
            "DPO end",
            w_dpo_end,
            "DPO start",
            w_dpo_start,
            "<",
        ),
        Claim.compare(
            "in-domain: at the end, OFS chase weight sigma(-Delta) > DPO weight sigma(-h) (decays slower, T1)",
            "OFS chase weight",
            w_chase_end,
            "DPO weight",
            w_dpo_end,
            ">",
        ),
        Claim.compare(
            "in-domain: OFS chase weight stays >= 0.3", "min chase weight", chase_min, "bound", 0.3, ">="
        ),
        Claim.compare(
            "in-domain: OFS chase weight stays <= 0.7", "max chase weight", chase_max, "bound", 0.7, "<="
        ),
        Claim.compare(
            "cross-domain: COFS-DPO final accuracy on A >= sequential DPO + 0.1",
            "COFS-DPO",
            final("cofs", 0),
            "seq DPO",
            final("seq_dpo", 0),
            ">=",
            0.1,
        ),
        Claim.compare(
            "cross-domain: COFS-DPO final accuracy on B within 0.1 of sequential DPO",
            "COFS-DPO",
            final("cofs", 1),
            "seq DPO",
            final("seq_dpo", 1),
            ">=",
            -0.1,
        ),
        Claim.compare(
            "cross-domain: COFS-DPO final average >= sequential DPO",
            "COFS-DPO",
            stat("cofs", "final_avg"),
            "seq DPO",
            stat("seq_dpo", "final_avg"),
            ">=",
        ),
        Claim.compare(
            "cross-domain: COFS-DPO final average >= sequential OFS-DPO",
            "COFS-DPO",
            stat("cofs", "final_avg"),
            "seq OFS-DPO",
            stat("seq_ofs", "final_avg"),
            ">=",
        ),
        Claim.compare(
            "cross-domain: COFS-DPO forgetting <= sequential DPO forgetting",
            "COFS-DPO",
            stat("cofs", "forgetting"),
            "seq DPO",
            stat("seq_dpo", "forgetting"),
            "<=",
        ),
    ]
    summary = {
        "in_domain": {
            "accuracy": {"dpo": acc_dpo, "ofs": acc_ofs},
            "even_fraction": {"dpo": ev_dpo, "ofs": ev_ofs},
            "grad_weight_dpo_start_end": [w_dpo_start, w_dpo_end],
            "chase_weight_range": [chase_min, chase_max],
            "ofs_final_leader": [s["ofs"]["leader"] for s in ind],
        },
        "cross_domain": {
            m: {
                "final_accuracy_A": final(m, 0),
                "final_accuracy_B": final(m, 1),
                "final_avg": stat(m, "final_avg"),
                "forgetting": stat(m, "forgetting"),
            }
            for m in ("seq_dpo", "seq_ofs", "cofs")
        },
    }
    return claims, summary


def _plots(per_seed: list[dict[str, Any]], out_dir: Path) -> list[str]:
    labels = {"seq_dpo": "seq. DPO", "seq_ofs": "seq. OFS-DPO", "cofs": "COFS-DPO"}
    groups = {}
    for j, dom in enumerate(("domain A (after B)", "domain B")):
        groups[dom] = {
            labels[m]: (
                _mean([s["cross_domain"][m]["matrix"][-1][j] for s in per_seed]),
                float(np.std([s["cross_domain"][m]["matrix"][-1][j] for s in per_seed])),
            )
            for m in labels
        }
    groups["domain A (after A)"] = {
        labels[m]: (
            _mean([s["cross_domain"][m]["matrix"][0][0] for s in per_seed]),
            float(np.std([s["cross_domain"][m]["matrix"][0][0] for s in per_seed])),
        )
        for m in labels
    }
    groups = {k: groups[k] for k in ("domain A (after A)", "domain A (after B)", "domain B")}
    acc = f"{PACKAGE}_per_domain_accuracy.png"
    bar_plot({}, out_dir / acc, "held-out reward accuracy", "toy A -> B: accuracy per domain", groups=groups)
    steps = [p["step"] for p in per_seed[0]["in_domain"]["dpo"]["probe"]]

    def curve(method: str, key: str) -> list[float]:
        return [
            float(np.mean(v))
            for v in zip(*[[p[key] for p in s["in_domain"][method]["probe"]] for s in per_seed])
        ]

    gw = f"{PACKAGE}_grad_weights.png"
    line_plot(
        {
            "DPO  mean sigma(-h)": curve("dpo", "grad_weight_dpo"),
            "OFS leader  mean sigma(-h_L)": curve("ofs", "grad_weight_dpo"),
            "OFS chase  mean sigma(-(h_L-h_C))": curve("ofs", "grad_weight_chase"),
        },
        out_dir / gw,
        "optimiser step",
        "gradient weight",
        "toy A: per-pair gradient weights on a probe set",
        x=steps,
    )
    return [acc, gw]


def quick_reproduction(out_dir: Path, quick: bool = True) -> QuickResult:
    """Run both toy experiments (3 seeds; 5 with ``quick=False``) and return the claims and plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(QUICK_CONFIG.seeds) if quick else [0, 1, 2, 3, 4]
    t0 = time.perf_counter()
    with _quiet_single_thread():
        per_seed = [_one_seed(s, out_dir / "ofs-dpo_runs") for s in seeds]
    claims, summary = build_claims(per_seed)
    plots = _plots(per_seed, out_dir)
    held = [c for c in claims if c.holds]
    failed = [c.claim for c in claims if not c.holds]
    ties = [c.claim.split(":")[1].strip() for c in claims if c.holds and c.method_value == c.baseline_value]
    notes = (
        f"{len(held)}/{len(claims)} claims hold. Tiny GPT2Config (2 layers, d=64), word-level toy tokenizer, "
        "LoRA r=8 on c_attn, lr 1e-3, beta 0.1, 128 online steps per domain, single-threaded CPU. "
        "With Adam, OFS-DPO's leader follows almost the same trajectory as DPO on this toy because the chase "
        "term's per-pair weight is nearly proportional to DPO's and Adam is invariant to gradient scale."
        + (f" Claims that hold only as exact ties (toy metric saturated): {ties}." if ties else "")
        + (f" Claims that do not hold: {failed}." if failed else "")
    )
    return QuickResult(
        package=PACKAGE,
        command="uv run reproduce ofs-dpo",
        dataset="toy preference domains A (even tokens) and B (low tokens), in-memory tokenizer (spec §8)",
        seeds=seeds,
        metrics={"summary": summary, "per_seed": per_seed, "wall_s": round(time.perf_counter() - t0, 1)},
        claims=claims,
        device="cpu",
        plots=plots,
        notes=notes,
    )
