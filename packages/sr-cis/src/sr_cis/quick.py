"""Quick reproduction: digits 16x16, 5 tasks x 2 classes, tiny models built from configs, >= 3 seeds.

Reads the shipped ``quick`` config (``sr-cis show-config --config quick``). Per seed: a tiny random ViT is
warmed up on a disjoint 30 % of the training pool, then frozen; the same split fits the frozen
text-to-pixel replay generator (the offline stand-in for SDXL: it never sees the incremental tasks, and
SR-CIS keeps only text). On the same runner:

(a) ``seq_lora`` - one LoRA + a growing head trained sequentially;
(b) ``per_task_lora`` - STM only: one LoRA + prototype head per task;
(c) SR-CIS fast path - (b) + restructuring every 2 tasks with replay from the text memory;
(d) SR-CIS - (c) + CA-OAD + a scripted large model that names the true class with probability 0.9 when
    it is among the candidates ((c) and (d) are the fast and final predictions of one run);
plus ``sr_cis_no_lora`` (the LoRA ablation), ``sr_cis_pixel_replay`` (replay from task pixel statistics),
``simple_cil`` (frozen-feature class means), the few-shot protocol, and on the trained SR-CIS memory the
inference ablations (max-softmax region choice; earlier CA-OAD rules). Seed 0 also runs SR-CIS with a tiny
*random* LLaVA (plumbing only). Claims are stated in :func:`build_claims` and computed from the numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import time
from pathlib import Path

import numpy as np
import torch

from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.mllm import ScriptedModel
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot
from sr_cis.config import ExperimentConfig

__all__ = [
    "CAOAD_ABLATIONS",
    "ROUTING_ABLATIONS",
    "OracleModel",
    "build_claims",
    "quick_reproduction",
    "run_seed",
]

_FILL = re.compile(r"belong to: (.*)\? Please")

#: region rules compared on the trained memory (the default is the config's, frozen_prototype)
ROUTING_ABLATIONS = ("nearest_prototype", "max_conf")
#: CA-OAD settings compared on the trained memory (name -> (score, rule)); the default is the config's
CAOAD_ABLATIONS = {
    "max_prob_zscore": ("max_prob", "zscore"),  # the earlier rule
    "max_prob_quantile": ("max_prob", "quantile"),
    "distance_margin_zscore": ("distance_margin", "zscore"),
}


def _key(image) -> str:
    t = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    return hashlib.sha1(t.detach().cpu().float().numpy().tobytes()).hexdigest()


class OracleModel(ScriptedModel):
    """A scripted large model that knows each test image's label.

    When the true class is among the prompt's candidates it names it with probability ``accuracy``,
    otherwise (or with probability ``1 - accuracy``) a wrong candidate. Deterministic per image and seed.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, names: dict[int, str], accuracy=0.9, seed=0
    ):
        self.lookup = {_key(im): int(y) for im, y in zip(images, labels)}
        self.names = names
        self.accuracy = accuracy
        self.seed = seed
        super().__init__(self._answer_fn)

    def _answer_fn(self, image, prompt: str) -> str:
        m = _FILL.search(prompt)
        if m is None:
            return "a digit"
        parts = [p.strip() for p in re.split(r", | or ", m.group(1)) if p.strip()]
        k = _key(image)
        true = self.names.get(self.lookup.get(k, -1))
        h = int(hashlib.sha1(f"{k}-{self.seed}".encode()).hexdigest()[:8], 16)
        u = (h % 10_000) / 10_000
        wrong = [p for p in parts if p != true] or parts
        if true in parts and u < self.accuracy:
            return f"It is {true}."
        return f"It is {wrong[h % len(wrong)]}."


def _inference_ablations(system, t: int, test, last: int) -> dict:
    """After the last task, on the trained memory: the earlier region rule and the earlier CA-OAD rules."""
    out: dict = {}
    if t != last:
        return out
    for rule in ROUTING_ABLATIONS:
        fast = dataclasses.replace(system.cfg.fast, routing=rule)
        with system.override(fast=fast, caoad=dataclasses.replace(system.cfg.caoad, enabled=False)):
            r = system.evaluate(test)
        out[f"routing.{rule}"] = {k: r[k] for k in ("region_acc", "acc_fast", "acc_in_true_region")}
    for name, (score, rule) in CAOAD_ABLATIONS.items():
        with system.override(caoad=dataclasses.replace(system.cfg.caoad, score=score, rule=rule)):
            r = system.evaluate(test)
        out[f"caoad.{name}"] = {k: r[k] for k in ("acc", "route_frac", "gain_flagged", "acc_fast_flagged")}
    return out


def quick_experiment(cfg: ExperimentConfig | None = None) -> ExperimentConfig:
    """The shipped ``quick`` config (one source of truth for the YAML and the run)."""
    return cfg or load_config(ExperimentConfig, resolve_config("sr_cis", "quick"))


def run_seed(cfg: ExperimentConfig, seed: int, tiny_llava: bool = False) -> dict:
    """Every method of the quick config for one seed (class order, split, backbone and runs seeded by it)."""
    from sr_cis.experiment import prepare, run_method

    cfg = copy.deepcopy(cfg)
    cfg.seed = seed
    cfg.data.class_order_seed = seed
    bench, base, corpus = prepare(cfg, torch.device("cpu"))
    x_te, y_te = bench.test.tensors
    oracle = OracleModel(x_te, y_te, bench.class_names, cfg.quick.oracle_accuracy, seed)
    q = cfg.quick
    out = {}

    def run(name, c, lm=oracle, inspect=None):
        torch.manual_seed(c.seed)
        return run_method(
            name, c, bench, lambda: copy.deepcopy(base), lm, corpus_generator=corpus, inspect=inspect
        )

    last = len(bench.split) - 1
    for name in cfg.methods:
        ablate = (lambda m, t, test: _inference_ablations(m, t, test, last)) if name == "sr_cis" else None
        out[name] = run(name, cfg, inspect=ablate)
    if q.few_shot:
        fs = copy.deepcopy(cfg)
        fs.data.shots = q.few_shot
        fs.system.stm.epochs = q.few_shot_epochs
        fs.system.stm.train_head = q.few_shot > 5  # pure prototype head when shots <= 5 (ours)
        for name in ("per_task_lora", "sr_cis", "simple_cil"):
            out[f"fewshot.{name}"] = run(name, fs)
    if tiny_llava:
        from papers_shared.mllm import build_tiny_llava
        from sr_cis.text_memory import DESCRIBE_TEMPLATE, choose_prompt

        names = list(bench.class_names.values())
        lm = build_tiny_llava(
            [DESCRIBE_TEMPLATE, choose_prompt(names), *names], image_size=cfg.data.image_size, seed=seed
        )
        c2 = copy.deepcopy(cfg)
        c2.system.text.describe_mode = "mllm"
        c2.system.text.n_desc = 2
        c2.system.text.max_new_tokens = 6
        c2.system.slow.answer_mode = "loglik"
        c2.max_eval_samples = 64
        out["sr_cis_tiny_llava"] = run("sr_cis", c2, lm)
    return out


def _per_seed(runs: list[dict], fn) -> list[float]:
    return [float(fn(r)) for r in runs]


def collect(runs: list[dict], num_tasks: int) -> dict:
    """Seed means (accuracies in %) and the per-seed lists the paired claims use (``seeds.*``). Wall times
    stay out of the metrics (they differ between two runs; the result's ``runtime_s`` has the total)."""
    m: dict = {}
    ps: dict[str, list[float]] = {}
    methods = [k for k in runs[0] if k != "sr_cis_tiny_llava"]
    for k in methods:
        for key, src in (("final", "final_acc"), ("avg", "avg_acc"), ("forgetting", "forgetting_acc")):
            ps[f"{key}.{k}"] = _per_seed(runs, lambda r, k=k, src=src: 100 * r[k][src])
        m[f"passes.{k}"] = float(np.mean(_per_seed(runs, lambda r, k=k: r[k]["steps"][-1]["passes"])))
        m[f"curve.{k}"] = [
            float(np.mean([100 * r[k]["steps"][t]["acc"] for r in runs])) for t in range(num_tasks)
        ]
    for k in ("sr_cis", "sr_cis_no_lora", "sr_cis_pixel_replay"):
        if k in runs[0]:
            ps[f"final.{k}_fast"] = _per_seed(runs, lambda r, k=k: 100 * r[k]["final_acc_fast"])
    m["curve.sr_cis_fast"] = [
        float(np.mean([100 * r["sr_cis"]["steps"][t]["acc_fast"] for r in runs])) for t in range(num_tasks)
    ]
    last = [r["sr_cis"]["steps"][-1] for r in runs]
    ps["region_acc.default"] = [100 * s["region_acc"] for s in last]
    for rule in ROUTING_ABLATIONS:
        ps[f"region_acc.{rule}"] = [100 * s[f"routing.{rule}"]["region_acc"] for s in last]
        ps[f"final.sr_cis_fast_{rule}"] = [100 * s[f"routing.{rule}"]["acc_fast"] for s in last]
    for k in ("sr_cis", "sr_cis_no_lora", "sr_cis_pixel_replay"):
        if k in runs[0]:
            ps[f"region_acc.{k}"] = [100 * r[k]["steps"][-1]["region_acc"] for r in runs]
            ps[f"acc_in_true_region.{k}"] = [100 * r[k]["steps"][-1]["acc_in_true_region"] for r in runs]
    for key in (
        "route_frac",
        "acc_fast_flagged",
        "acc_final_flagged",
        "acc_fast_unflagged",
        "fix_rate",
        "harm_rate",
    ):
        ps[key] = [100 * s[key] for s in last]
    ps["gain_flagged"] = [100 * s["gain_flagged"] for s in last]
    ps["slow_gain.default"] = [100 * (s["acc"] - s["acc_fast"]) for s in last]
    for name in CAOAD_ABLATIONS:
        ps[f"route_frac.{name}"] = [100 * s[f"caoad.{name}"]["route_frac"] for s in last]
        ps[f"gain_flagged.{name}"] = [100 * s[f"caoad.{name}"]["gain_flagged"] for s in last]
        ps[f"slow_gain.{name}"] = [100 * (s[f"caoad.{name}"]["acc"] - s["acc_fast"]) for s in last]
    for k in ("sr_cis", "sr_cis_no_lora"):
        if k in runs[0]:
            reps = [[s["stm"] for s in r[k]["steps"] if "stm" in s] for r in runs]
            ps[f"lora_rel_delta.{k}"] = [float(np.mean([x["lora_rel_delta"] for x in rr])) for rr in reps]
            ps[f"prototype_shift.{k}"] = [
                100 * float(np.mean([x["prototype_shift"] for x in rr])) for rr in reps
            ]
    if "fewshot.sr_cis" in runs[0]:
        for k in ("per_task_lora", "sr_cis", "simple_cil"):
            ps[f"fewshot_drop.{k}"] = [a - b for a, b in zip(ps[f"final.{k}"], ps[f"final.fewshot.{k}"])]
    for k in ("sr_cis", "sr_cis_pixel_replay", "per_task_lora"):
        if k in runs[0]:
            st = runs[0][k]["steps"][-1]["storage"]
            m[f"storage.{k}"] = {
                x: st[x] for x in ("regions", "lora_bytes", "head_bytes", "text_bytes", "image_stats_bytes")
            }
    if "sr_cis_tiny_llava" in runs[0]:
        r = runs[0]["sr_cis_tiny_llava"]
        m["tiny_llava"] = {"final": 100 * r["final_acc"], "final_fast": 100 * r["final_acc_fast"], "seed": 0}
    for k, v in ps.items():
        m[k] = float(np.mean(v))
        m[f"std.{k}"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    m["seeds"] = ps
    return m


def build_claims(m: dict, seeds: list[int]) -> list[Claim]:
    """The claims, stated before measuring (accuracies in %, per-seed paired where a method is compared).

    From the paper's abstract: SR-CIS beats competitive baselines, restructuring keeps the memory small,
    the large model corrects the small one, few-shot robustness. From the issue's measured causes (region
    choice, LoRA schedule, CA-OAD score, text memory): each fix is checked by its own number.
    """
    s = m["seeds"]
    n = len(seeds)
    most = n // 2 + 1

    def paired(text, a, ka, b, kb, op, margin=0.0, wins=None):
        return Claim.paired_compare(text, a, s[ka], b, s[kb], op, margin, min_wins=wins, seeds=seeds)

    def const(key: str, value: float) -> list[float]:
        return [value] * len(s[key])

    s["const.lora_floor"] = const("route_frac", 0.10)
    s["const.share_lo"] = const("route_frac", 15.0)
    s["const.share_hi"] = const("route_frac", 25.0)
    claims = [
        paired("SR-CIS beats SimpleCIL (final acc; slow path = scripted large model, right w.p. 0.9 on candidates)",
               "sr_cis", "final.sr_cis", "simple_cil", "final.simple_cil", ">", wins=most),
        paired("SR-CIS fast path (small models only) >= SimpleCIL (final acc)",
               "sr_cis_fast", "final.sr_cis_fast", "simple_cil", "final.simple_cil", ">=", wins=most),
        paired("frozen-prototype region choice finds the true class's region more often than max-softmax (last step)",
               "frozen_prototype", "region_acc.default", "max_conf", "region_acc.max_conf", ">", wins=n),
        paired("the STM LoRA adapts: ||dW||/||W|| >= 0.10 (mean over tasks)",
               "sr_cis", "lora_rel_delta.sr_cis", "floor", "const.lora_floor", ">=", wins=n),
        paired("LoRA ablation: SR-CIS fast path with LoRA >= without LoRA (final acc)",
               "sr_cis_fast", "final.sr_cis_fast", "sr_cis_no_lora_fast", "final.sr_cis_no_lora_fast", ">=", wins=most),
        paired("CA-OAD routes at least 15 % of the stream (configured 20 %, last step)",
               "sr_cis", "route_frac", "15%", "const.share_lo", ">=", wins=n),
        paired("CA-OAD routes at most 25 % of the stream (configured 20 %, last step)",
               "sr_cis", "route_frac", "25%", "const.share_hi", "<=", wins=n),
        paired("routed samples gain from the slow path (accuracy on routed samples, last step)",
               "final", "acc_final_flagged", "fast", "acc_fast_flagged", ">", wins=n),
        paired("the calibrated CA-OAD adds more accuracy than the earlier max-prob z-score rule (last step)",
               "default", "slow_gain.default", "max_prob_zscore", "slow_gain.max_prob_zscore", ">", wins=most),
        paired("fast-path accuracy on routed samples is >= 10 points below unrouted (last step)",
               "routed", "acc_fast_flagged", "unrouted", "acc_fast_unflagged", "<", -10.0, wins=n),
        paired("(d) > (c): the slow path improves on the fast path (final acc)",
               "sr_cis", "final.sr_cis", "sr_cis_fast", "final.sr_cis_fast", ">", wins=n),
        paired("(c) within 5 points of (b) after restructuring (final acc)",
               "sr_cis_fast", "final.sr_cis_fast", "per_task_lora", "final.per_task_lora", ">=", -5.0, wins=most),
        Claim.compare("(c) needs fewer small-model passes at inference than (b) (last step)",
                      "sr_cis", m["passes.sr_cis"], "per_task_lora", m["passes.per_task_lora"], "<"),
        paired("text-only memory within 3 points of the pixel-statistics replay (final acc)",
               "sr_cis", "final.sr_cis", "sr_cis_pixel_replay", "final.sr_cis_pixel_replay", ">=", -3.0, wins=most),
        paired("(a) << (b): per-task LoRA + prototypes beat sequential LoRA by 10 points (final acc)",
               "per_task_lora", "final.per_task_lora", "seq_lora", "final.seq_lora", ">", 10.0, wins=most),
        paired("(b) forgets less than (a) (average forgetting)",
               "per_task_lora", "forgetting.per_task_lora", "seq_lora", "forgetting.seq_lora", "<", wins=most),
    ]  # fmt: skip
    if "fewshot_drop.sr_cis" in s:
        claims += [
            paired("few-shot: SR-CIS loses no more final accuracy than per-task LoRA",
                   "sr_cis", "fewshot_drop.sr_cis", "per_task_lora", "fewshot_drop.per_task_lora", "<=", wins=most),
            paired("few-shot: SR-CIS loses no more final accuracy than SimpleCIL",
                   "sr_cis", "fewshot_drop.sr_cis", "simple_cil", "fewshot_drop.simple_cil", "<=", wins=most),
        ]  # fmt: skip
    return claims


def _plots(m: dict, out_dir: Path, num_tasks: int) -> list[str]:
    shown = ("seq_lora", "per_task_lora", "sr_cis_fast", "sr_cis", "sr_cis_no_lora", "simple_cil")
    line_plot(
        {k: m[f"curve.{k}"] for k in shown if f"curve.{k}" in m},
        out_dir / "sr-cis_accuracy_per_task.png",
        xlabel="task",
        ylabel="accuracy on seen classes (%)",
        title=f"digits, {num_tasks} tasks x 2 classes (mean of {len(m['seeds']['final.sr_cis'])} seeds)",
        x=list(range(1, num_tasks + 1)),
    )
    bar_plot(
        {k: (m[f"final.{k}"], m[f"std.final.{k}"]) for k in shown if f"final.{k}" in m},
        out_dir / "sr-cis_final_accuracy.png",
        ylabel="final accuracy (%)",
        title="after the last task (mean +- std over seeds)",
    )
    bar_plot(
        {},
        out_dir / "sr-cis_routing.png",
        ylabel="%",
        title="region choice and CA-OAD (last step)",
        groups={
            "region acc.": {"new": m["region_acc.default"], "earlier": m["region_acc.max_conf"]},
            "routed share": {"new": m["route_frac"], "earlier": m["route_frac.max_prob_zscore"]},
            "gain on routed": {"new": m["gain_flagged"], "earlier": m["gain_flagged.max_prob_zscore"]},
        },
    )
    return ["sr-cis_accuracy_per_task.png", "sr-cis_final_accuracy.png", "sr-cis_routing.png"]


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: ExperimentConfig | None = None) -> QuickResult:
    """Run the quick config over ``quick.seeds`` (``quick.full_seeds`` with ``quick=False``)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = quick_experiment(cfg)
    # One intra-op thread, fixed (the runner's two threads cost more than they give on these tiny tensors:
    # a LoRA step measured 13x the CPU time with 2 threads on a loaded 2-core machine). The runner records
    # the thread count after the run, so the result JSON says 1.
    torch.set_num_threads(1)
    seeds = list(cfg.quick.seeds if quick else cfg.quick.full_seeds)
    runs = [run_seed(cfg, s, tiny_llava=cfg.quick.tiny_llava and i == 0) for i, s in enumerate(seeds)]
    m = collect(runs, cfg.data.num_tasks)
    claims = build_claims(m, seeds)
    plots = _plots(m, out_dir, cfg.data.num_tasks)
    failed = [c.claim for c in claims if not c.holds]
    weak = [
        c.claim for c in claims if c.paired and abs(c.paired["diff_mean"] - c.margin) < c.paired["diff_std"]
    ]
    m["underpowered_claims"] = weak  # paired difference (to the claim's threshold) below its spread
    notes = (
        "Tiny random ViT warmed up on 30% of the digits training pool; replay from stored text through a frozen "
        "class-name-to-pixel model fitted on that same held-out split (stand-in for SDXL); scripted large model "
        f"(right w.p. {cfg.quick.oracle_accuracy} when the true class is a candidate). Per-seed values and paired "
        "differences are in metrics.seeds and each claim's 'paired'. "
        + (f"Claims that do not hold: {failed}. " if failed else "All claims hold. ")
        + (
            f"Paired difference smaller than its spread over {len(seeds)} seeds (see the 5-seed run, "
            f"`sr-cis quick --full`): {weak}."
            if weak
            else ""
        )
    )
    return QuickResult(
        package="sr-cis",
        command="uv run reproduce sr-cis" + ("" if quick else " --full"),
        dataset=f"sklearn digits 16x16 ({cfg.data.num_tasks} tasks x 2 classes)",
        seeds=seeds,
        metrics=m,
        claims=claims,
        device="cpu",
        runtime_s=time.perf_counter() - t0,
        plots=plots,
        notes=notes,
    )
