"""``papers_shared.ssm.ops.selective_scan`` (chunked, CPU) against a naive per-step loop at the
sequence lengths FSG produces on CIFAR ResNet-20 (``1 + L * n`` with ``L = 5`` and ``n`` the size of a
conv / FC weight), with the slow net's channel sizes: the paper's Mamba (``d_inner = 100``,
``d_state = 16``) and the small digits-demo one (``d_inner = 4``, ``d_state = 4``).

The naive loop runs one recurrence step per position (state ``(b, d, n)``, nothing materialised),
forward under ``no_grad``; forward + backward of the naive loop (autograd through every step) is
timed only for the shorter sequences. Medians over ``--repeats`` runs after one warm-up.

    uv run python packages/fsg-bnn/benchmarks/bench_scan.py [--repeats 3] [--out docs/benchmarks/fsg-bnn-scan.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from papers_shared.checkpoints import atomic_write_text
from papers_shared.ssm.ops import selective_scan

ROOT = Path(__file__).resolve().parents[3]
#: distinct weight sizes of CIFAR ResNet-20 (conv1, fc, stage convs, downsample convs)
RESNET20_SIZES = {
    "conv1": 432,
    "fc": 640,
    "stage1 conv": 2304,
    "stage2 first conv": 4608,
    "stage2 conv": 9216,
    "stage3 first conv": 18432,
    "stage3 conv": 36864,
}


def naive_scan(u, delta, A, B, C, D, z, delta_bias):
    """One step per position: ``h = exp(dt A) h + dt u B``, ``y = C h + D u``, gated by ``silu(z)``."""
    dt = F.softplus(delta + delta_bias[None, :, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for s in range(u.shape[2]):
        h = torch.exp(dt[:, :, s, None] * A) * h + (dt[:, :, s] * u[:, :, s])[..., None] * B[:, None, :, s]
        ys.append((h * C[:, None, :, s]).sum(-1))
    y = torch.stack(ys, -1) + D[None, :, None] * u
    return y * F.silu(z)


def _inputs(length: int, d: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u, delta, z = (torch.randn(1, d, length, generator=g) for _ in range(3))
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B, C = torch.randn(1, n, length, generator=g), torch.randn(1, n, length, generator=g)
    return u, delta * 0.5 - 4.0, A, B, C, torch.ones(d), z, torch.zeros(d)


def _time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hgs-length", type=int, default=5)
    p.add_argument("--naive-backward-max", type=int, default=12_000, help="longest length for naive fwd+bwd")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "fsg-bnn-scan.json")
    args = p.parse_args(argv)
    rows = []
    for d, n, label in (
        (100, 16, "paper slow net (d_inner 100, d_state 16)"),
        (4, 4, "small slow net (4, 4)"),
    ):
        for layer, size in RESNET20_SIZES.items():
            length = 1 + args.hgs_length * size
            x = _inputs(length, d, n)
            reps = args.repeats if length < 50_000 else 1

            def shared(x=x):
                with torch.no_grad():
                    selective_scan(
                        *x[:5], D=x[5], z=x[6], delta_bias=x[7], delta_softplus=True, backend="torch"
                    )

            def naive(x=x):
                with torch.no_grad():
                    naive_scan(*x)

            row = {
                "slow_net": label,
                "layer": layer,
                "length": length,
                "shared_fwd_s": _time(shared, reps),
                "naive_fwd_s": _time(naive, reps),
            }
            y_ref = naive_scan(*x)
            y = selective_scan(*x[:5], D=x[5], z=x[6], delta_bias=x[7], delta_softplus=True, backend="torch")
            row["max_abs_diff"] = float((y - y_ref).abs().max())
            xs = [t.clone().requires_grad_(i in (0, 1, 3, 4)) for i, t in enumerate(x)]

            def shared_fb(xs=xs):
                selective_scan(
                    *xs[:5], D=xs[5], z=xs[6], delta_bias=xs[7], delta_softplus=True, backend="torch"
                ).square().sum().backward()

            row["shared_fwd_bwd_s"] = _time(shared_fb, reps)
            if length <= args.naive_backward_max:
                row["naive_fwd_bwd_s"] = _time(lambda xs=xs: naive_scan(*xs).square().sum().backward(), reps)
                row["speedup_fwd_bwd"] = round(row["naive_fwd_bwd_s"] / row["shared_fwd_bwd_s"], 2)
            row["speedup_fwd"] = round(row["naive_fwd_s"] / row["shared_fwd_s"], 2)
            rows.append({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(rows[-1]), flush=True)
            _write(args, rows)  # after every row: a partial run still leaves its numbers
    print(f"wrote {args.out}")
    return 0


def _write(args, rows) -> None:
    report = {
        "benchmark": "papers_shared selective_scan (chunked, CPU) vs naive per-step loop, FSG sequence lengths",
        "command": "uv run python packages/fsg-bnn/benchmarks/bench_scan.py",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "hgs_length": args.hgs_length,
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
