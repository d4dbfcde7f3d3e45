"""System1 cost vs the frozen-ViT linear baseline, System2 routing fraction and end-to-end latency.

Measured side by side in one process (medians over repeats after warm-up):

1. Per-sample inference cost of ICL System1 (ViT -> class projector -> CKT-MHA -> cosine to the memory
   keys) vs the frozen-ViT linear head (ViT -> token mean -> Linear), at the tiny test scale and at
   the paper's ViT-B/16 scale (224 px, d_c = 896; architecture from ``ViTConfig()``, random weights:
   the same arithmetic as ``google/vit-base-patch16-224``, no download).
2. Per-sample training-step cost at the tiny scale (ICL in the EM phase = memory + projection step,
   ICL after ``em_steps`` = projection step only, vs the linear head and ER), batch 10 + replay 10.
3. On the trained digits model of the quick reproduction (seed 0): the fraction of test samples vMF-ODI
   routes to System2, and the latency of a test batch of 32 through System1 alone vs System1 + ODI +
   a tiny random LLaVA System2.

    uv run python packages/icl-vmf/benchmarks/bench_system1.py [--out docs/benchmarks/icl-vmf-system1.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from icl_vmf.config import ExperimentConfig, System1Config
from icl_vmf.data import build_stream, iterate_batches
from icl_vmf.encoders import build_vit, prepare_encoder, tiny_vit_config
from icl_vmf.experiment import num_threads
from icl_vmf.interaction import InteractiveClassifier
from icl_vmf.learner import build_learner
from icl_vmf.odi import VMFOutlierDetector
from icl_vmf.quick import quick_config
from icl_vmf.system2 import build_system2
from icl_vmf.trainer import run_stream
from papers_shared.checkpoints import atomic_write_text
from papers_shared.device import time_fn

ROOT = Path(__file__).resolve().parents[3]


def _paired_ms(fns: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each function, timed round-robin (A, B, A, B, ...) so that all of
    them see the same background load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        time_fn(fn, "cpu", repeats=0, warmup=warmup)
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k] += time_fn(fn, "cpu", repeats=1, warmup=0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def _learners(scale: str, device: torch.device):
    """ICL and the linear/ER baselines on a shared frozen encoder, every class of the stream seen."""
    cfg = ExperimentConfig()
    if scale == "tiny":
        cfg.system1 = System1Config(
            vit_config=tiny_vit_config().to_dict(), image_size=16, hidden_dim=48, memory_dim=64, num_heads=4
        )
        enc = build_vit(None, config=tiny_vit_config(), image_size=16, seed=0)
        size, n_cls, n_tasks = 16, 10, 5
    else:
        from transformers import ViTConfig

        enc = build_vit(None, config=ViTConfig(), image_size=224, seed=0)  # ViT-B/16 architecture
        size, n_cls, n_tasks = 224, 100, 10
    cfg.train.buffer_size = 10 * n_cls
    cfg.train.progress = False

    class _Stream:  # the parts of StreamData the learners read
        num_classes, num_tasks, classes_per_task = n_cls, n_tasks, n_cls // n_tasks

    out = {}
    for m in ("icl", "linear", "er"):
        learner = build_learner(m, cfg, _Stream, enc, device, 0)
        for t in range(n_tasks):
            learner.end_task(t)
        out[m] = learner
    return out, size, cfg


def bench_inference(scale: str, batch: int, repeats: int, warmup: int) -> dict:
    learners, size, _ = _learners(scale, torch.device("cpu"))
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ms = _paired_ms({m: (lambda m=m: learners[m].scores(x)) for m in ("icl", "linear")}, repeats, warmup)
    return {
        "batch": batch,
        "image_size": size,
        "icl_ms_per_sample": ms["icl"] / batch,
        "linear_ms_per_sample": ms["linear"] / batch,
        "icl_samples_per_s": 1000 * batch / ms["icl"],
        "linear_samples_per_s": 1000 * batch / ms["linear"],
        "ratio_icl_over_linear": ms["icl"] / ms["linear"],
    }


def bench_training(repeats: int, warmup: int) -> dict:
    learners, size, cfg = _learners("tiny", torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(10, 3, size, size, generator=g), torch.randint(2, 4, (10,), generator=g)
    res = {}
    for learner in learners.values():
        learner.begin_task(1)  # replay on (task >= 1)
        learner.buffer.add(torch.rand(20, 3, size, size, generator=g), torch.arange(20) % 4)
    ms = _paired_ms(
        {
            "icl_em_phase": lambda: learners["icl"].observe(x, y, 0),
            "icl_projection_phase": lambda: learners["icl"].observe(x, y, 10**6),
            "linear": lambda: learners["linear"].observe(x, y, 0),
            "er": lambda: learners["er"].observe(x, y, 0),
        },
        repeats,
        warmup,
    )
    for k, v in ms.items():
        res[f"{k}_ms_per_sample"] = v / 10
    res["ratio_icl_em_over_er"] = res["icl_em_phase_ms_per_sample"] / res["er_ms_per_sample"]
    res["ratio_icl_projection_over_er"] = res["icl_projection_phase_ms_per_sample"] / res["er_ms_per_sample"]
    res["batch"] = 10
    res["replay_batch"] = 10
    return res


def bench_routing(max_batches: int) -> dict:
    cfg = quick_config([0])
    cfg.methods = ["icl"]
    device = torch.device("cpu")
    data = build_stream(cfg.data)
    enc = prepare_encoder(cfg, data, 0, device)
    learner = build_learner("icl", cfg, data, enc, device, 0)
    run_stream(learner, data, cfg, 0)
    tiny = build_system2(type(cfg.system2)(backend="tiny", k=3, max_new_tokens=16), device, data.class_names)
    s1_ms, e2e_ms, hard, total, answered, ok1, okf = [], [], 0, 0, 0, 0, 0

    batches = [
        b for s in range(data.num_tasks) for b in iterate_batches(data.test_sets[s], 32, shuffle=False)
    ]
    for x, y in batches[:max_batches]:
        if x.shape[0] < 32:
            continue
        t0 = time.perf_counter()
        learner.scores(x)
        s1_ms.append(1000 * (time.perf_counter() - t0))
        clf = InteractiveClassifier(learner.scores, tiny, VMFOutlierDetector(), 3, data.class_names)
        t0 = time.perf_counter()
        pred, info = clf.predict(x)
        e2e_ms.append(1000 * (time.perf_counter() - t0))
        ok1 += int((info.system1_pred == y).sum())
        okf += int((pred == y).sum())
        hard += int(info.hard.sum())
        total += x.shape[0]
        answered += sum(c is not None for c in info.system2_choice)
    return {
        "test_batch": 32,
        "batches": len(s1_ms),
        "routed_fraction": hard / total,
        "system2_answer_parsed_fraction": answered / hard if hard else float("nan"),
        "system1_accuracy": ok1 / total,
        "accuracy_with_tiny_llava": okf / total,
        "system1_ms_per_batch": statistics.median(s1_ms),
        "end_to_end_ms_per_batch_tiny_llava": statistics.median(e2e_ms),
        "ratio_end_to_end_over_system1": statistics.median(e2e_ms) / statistics.median(s1_ms),
        "tiny_llava_max_new_tokens": 16,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "icl-vmf-system1.json")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--vitb-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the tiny-scale parts")
    p.add_argument(
        "--vitb-threads", type=int, default=0, help="torch threads at ViT-B scale (0: torch default)"
    )
    p.add_argument("--skip-vitb", action="store_true")
    p.add_argument("--routing-batches", type=int, default=17)
    args = p.parse_args(argv)
    report = {
        "benchmark": "icl-vmf System1 cost, System2 routing and latency",
        "command": "uv run python packages/icl-vmf/benchmarks/bench_system1.py",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
    }
    with num_threads(args.threads):
        report["inference_tiny"] = bench_inference("tiny", 32, args.repeats, 2)
        report["training_tiny"] = bench_training(args.repeats, 2)
        if not args.skip_vitb:
            report["inference_vit_b16"] = bench_inference("vit-b16", 8, args.vitb_repeats, 1)
        report["routing_digits_tiny_llava"] = bench_routing(args.routing_batches)
    report["system1_within_1.5x_of_linear"] = {
        k: report[k]["ratio_icl_over_linear"] <= 1.5
        for k in ("inference_tiny", "inference_vit_b16")
        if k in report
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
