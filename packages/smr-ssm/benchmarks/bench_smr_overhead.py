"""SMR training-speed overhead (issue #10 benchmark 2; the paper's abstract: SMR keeps
convolution-mode training speed).

Forward + backward time of S4D + SMR over S4D (same parameters otherwise) at L = 4096, H = 64
(N = 64, batch 4): target <= 1.15x. Also reported: the ``literal`` preset, L = 1024, and the same
ratio for a full residual block (norm, S4D, GELU-GLU output layer), which is what training throughput
(tokens/s) sees. Variants are timed interleaved, repeat by repeat; medians after warm-up.

Run: ``uv run python packages/smr-ssm/benchmarks/bench_smr_overhead.py`` (writes
``docs/benchmarks/smr-ssm-smr-overhead.json``; ``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from papers_shared.checkpoints import atomic_write_text
from papers_shared.device import seed_everything
from smr_ssm import S4D, SSMBlock
from smr_ssm.runners import time_layers

ROOT = Path(__file__).resolve().parents[3]


def variants(kind: str, H: int, N: int) -> dict:
    out = {}
    for name, smr in (("s4d", None), ("s4d+smr", "default"), ("s4d+smr:literal", "literal")):
        seed_everything(0)
        out[name] = S4D(H, N, smr=smr) if kind == "layer" else SSMBlock(H, "s4d", {"d_state": N}, smr=smr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 1024])
    p.add_argument("--H", type=int, default=64)
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "smr-ssm-smr-overhead.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for L in args.lengths:
        u = torch.randn(args.batch, L, args.H)
        for kind in ("layer", "block"):
            t = time_layers(variants(kind, args.H, args.N), u, args.repeats, args.warmup)
            for name, s in t.items():
                rows.append(
                    {
                        "kind": kind,
                        "variant": name,
                        "L": L,
                        "ms": 1000 * s,
                        "ratio_to_s4d": s / t["s4d"],
                        "tokens_per_s": args.batch * L / s,
                    }
                )
                print(f"{kind:>5} {name:>16} L={L:>5}: {1000 * s:8.2f} ms  {s / t['s4d']:.3f}x")
    head = next(
        r for r in rows if r["kind"] == "layer" and r["variant"] == "s4d+smr" and r["L"] == args.lengths[0]
    )
    res = {
        "benchmark": "forward+backward time, S4D + SMR over S4D (CPU)",
        "shape": {"H": args.H, "N": args.N, "batch": args.batch},
        "rows": rows,
        "headline_ratio": head["ratio_to_s4d"],
        "headline": f"S4D+SMR / S4D at L={args.lengths[0]}, H={args.H}",
        "target": "<= 1.15x",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    print(
        f"headline {res['headline']}: {res['headline_ratio']:.3f}x (target {res['target']}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
