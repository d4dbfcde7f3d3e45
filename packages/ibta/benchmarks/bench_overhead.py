"""Time per attack call of every IBTA variant over its base attack (issue: target <= 2.2x).

Same model, batch, seed and settings for X and IBTA-X; calls are interleaved (X, IBTA-X, X, ...) after
a warm-up and the median over ``--repeats`` is reported; ``ibta_fused`` is IBTA-X with
``fuse_branches=True`` (one 2B forward; S2I and RAP fall back to two passes). Writes ``docs/benchmarks/ibta-overhead.json``.

    uv run --frozen --no-sync python packages/ibta/benchmarks/bench_overhead.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ibta import BASES, IBTAAttack, base_attack
from ibta.models import small_cnn

ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "ibta-overhead.json"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = small_cnn(10, 16, args.size, seed=0).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    kw = dict(steps=args.steps, seed=0, ssa_n=4, rap_late_start=args.steps // 2)
    results = {}
    for base in BASES:
        atks = {
            "base": base_attack(base, model, **kw),
            "ibta": IBTAAttack(model, base=base, **kw),
            "ibta_fused": IBTAAttack(model, base=base, fuse_branches=True, **kw),
        }
        for a in atks.values():
            a(x, y)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in atks}
        for _ in range(args.repeats):
            for k, a in atks.items():
                t0 = time.perf_counter()
                a(x, y)
                times[k].append(time.perf_counter() - t0)
        mb, mi = statistics.median(times["base"]), statistics.median(times["ibta"])
        mf = statistics.median(times["ibta_fused"])
        results[base] = {
            "base_s": mb,
            "ibta_s": mi,
            "ratio": mi / mb,
            "ibta_fused_s": mf,
            "ratio_fused": mf / mb,
            "target": 2.2,
            "meets_target": mi / mb <= 2.2,
        }
        print(
            f"{base:14s} base {mb * 1e3:8.1f} ms  ibta {mi * 1e3:8.1f} ms  ratio {mi / mb:.2f}"
            f"  fused {mf * 1e3:8.1f} ms  ratio {mf / mb:.2f}"
        )
    out = {
        "benchmark": "ibta attack time over its base attack",
        "command": "uv run --frozen --no-sync python packages/ibta/benchmarks/bench_overhead.py",
        "model": f"small_cnn(width 16) on 3x{args.size}x{args.size}",
        "batch": args.batch,
        "steps": args.steps,
        "ssa_n": 4,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": f"{platform.machine()} CPU, shared with other jobs (timings inflated by load)",
        "torch": torch.__version__,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
