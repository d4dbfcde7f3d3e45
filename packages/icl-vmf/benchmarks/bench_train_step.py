"""One ICL System1 training step at the paper's scale (ViT-B/16, 224 px, d_c = 896), single process.

The step time is what the README's multi-GPU wall-time estimates start from. The architecture is built from
``ViTConfig()`` (random weights, the same arithmetic as ``google/vit-base-patch16-224``, no download).
To finish in minutes on a CPU the step runs at a reduced batch (``--batch`` current images + as many
replayed ones, each with its second view, so ``4 * batch`` encoder rows per loss evaluation); the cost of
the frozen-ViT forward and of CKT-MHA is linear in the rows, so the per-row time is scaled to the paper's
batch 10 + replay 10 (40 rows). Medians of interleaved repeats after a warm-up; writes JSON.

    uv run --no-sync python packages/icl-vmf/benchmarks/bench_train_step.py [--batch 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from icl_vmf.config import ExperimentConfig, System1Config, TrainConfig
from icl_vmf.encoders import build_vit
from icl_vmf.learner import build_learner
from papers_shared.results import environment_info, write_json

ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="current images per step (replay draws as many)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "icl-vmf-train-step.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import ViTConfig

    cfg = ExperimentConfig(
        system1=System1Config(vit_config=ViTConfig().to_dict(), image_size=224),
        train=TrainConfig(batch_size=args.batch, minibatch_size=args.batch, buffer_size=100, progress=False),
    )
    enc = build_vit(None, config=ViTConfig(), image_size=224, seed=0)

    class _Stream:  # the parts of StreamData a learner reads: Split CIFAR-100 (10 x 10)
        num_classes, num_tasks, classes_per_task = 100, 10, 10

    learner = build_learner("icl", cfg, _Stream, enc, "cpu", 0)
    g = torch.Generator().manual_seed(0)
    learner.begin_task(0)
    learner.buffer.add(torch.rand(10, 3, 32, 32, generator=g), torch.arange(10))
    learner.end_task(0)
    learner.begin_task(1)  # replay on
    x, y = torch.rand(args.batch, 3, 32, 32, generator=g), 10 + torch.arange(args.batch) % 10
    steps = {
        "em_phase": lambda: learner.observe(x, y, 0),
        "projection_phase": lambda: learner.observe(x, y, 10**6),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rows = 4 * args.batch
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "benchmark": "icl-vmf: one ICL System1 training step at ViT-B/16 scale, one process",
        "command": "uv run --no-sync python packages/icl-vmf/benchmarks/bench_train_step.py",
        "environment": environment_info(),
        "batch": args.batch,
        "encoder_rows_per_loss_evaluation": rows,
        "seconds_per_step_measured": med,
        "seconds_per_row_per_step": {k: v / rows for k, v in med.items()},
        "seconds_per_step_at_batch_10_replay_10": {k: v / rows * 40 for k, v in med.items()},
        "repeats": times,
    }
    write_json(out, args.out)
    print(out["seconds_per_step_at_batch_10_replay_10"], "->", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
