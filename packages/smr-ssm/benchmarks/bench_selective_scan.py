"""Selective-scan benchmark (issue #10, benchmark 1 and 3).

(1) CPU: ``papers_shared.ssm.ops.selective_scan`` (chunked scan, custom autograd function) against
mamba-ssm's pure-PyTorch reference algorithm (``selective_scan_ref``: materialise ``exp(delta A)`` and
``delta B u``, then one einsum step per position), re-implemented below because ``mamba_ssm`` cannot be
imported without CUDA. Mamba shapes: ``u, delta, z (b, d, l)``, variable ``B, C (b, n, l)``, ``D``,
``delta_bias``, softplus. Forward, and forward + backward. Target: >= 3x faster.
(3) GPU (only when CUDA is present): the CUDA path of ``selective_scan`` (mamba-ssm's kernel when it
imports, otherwise the same PyTorch scan on the GPU) against the CPU path.

Run: ``uv run python packages/smr-ssm/benchmarks/bench_selective_scan.py`` (writes
``docs/benchmarks/smr-ssm-selective-scan.json``; ``--out`` to change). Timings are medians after warm-up,
the two implementations interleaved repeat by repeat.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from papers_shared.checkpoints import atomic_write_text
from papers_shared.ssm.ops import has_mamba_cuda, selective_scan

ROOT = Path(__file__).resolve().parents[3]


def mamba_reference_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """mamba-ssm's reference algorithm (variable B/C of shape (b, n, l)), written out independently."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    delta = delta + delta_bias[None, :, None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
    x = A.new_zeros(b, d, A.shape[1])
    ys = []
    for i in range(l):
        x = dA[:, :, i] * x + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i].float()))
    y = torch.stack(ys, dim=2) + u * D[None, :, None]
    return (y * F.silu(z.float())).to(dtype_in)


def ours(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend="torch")


def make_inputs(b, d, l, n, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = dict(
        u=torch.randn(b, d, l, generator=g),
        delta=torch.randn(b, d, l, generator=g) * 0.5 - 1.0,
        A=-torch.exp(torch.randn(d, n, generator=g) * 0.5),
        B=torch.randn(b, n, l, generator=g),
        C=torch.randn(b, n, l, generator=g),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, d, l, generator=g),
        delta_bias=torch.rand(d, generator=g) * 0.1,
    )
    return {k: v.to(device) for k, v in t.items()}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict, make_args, backward: bool, repeats: dict, warmup: int, device="cpu") -> dict:
    """Median seconds per function; one repeat of each in turn (``repeats[name]`` each)."""

    def once(fn):
        args = make_args()
        if backward:
            args = {k: v.clone().requires_grad_() for k, v in args.items()}
        _sync(device)
        t0 = time.perf_counter()
        y = fn(**args)
        if backward:
            y.backward(torch.ones_like(y))
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        for fn in fns.values():
            once(fn)
    times = {k: [] for k in fns}
    for r in range(max(repeats.values())):
        for k, fn in fns.items():
            if r < repeats[k]:
                times[k].append(once(fn))
    return {k: {"median_s": sorted(v)[len(v) // 2], "all_s": v} for k, v in times.items()}


def check_equal(b, d, l, n) -> float:
    x = make_inputs(b, d, l, n)
    return (ours(**x) - mamba_reference_scan(**x)).abs().max().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, default=2048)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7, help="forward repeats (and ours, forward+backward)")
    p.add_argument(
        "--ref-backward-repeats", type=int, default=3, help="the reference's backward takes tens of seconds"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "smr-ssm-selective-scan.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    b, d, l, n = args.batch, args.d, args.L, args.n
    x = make_inputs(b, d, l, n)
    err = check_equal(1, 16, 256, n)
    print(f"max |ours - reference| on (1, 16, 256, {n}): {err:.2e}")
    fns = {"papers_shared.selective_scan": ours, "mamba_reference_loop": mamba_reference_scan}
    fwd = time_interleaved(fns, lambda: x, False, {k: args.repeats for k in fns}, args.warmup)
    bwd = time_interleaved(
        fns,
        lambda: x,
        True,
        {"papers_shared.selective_scan": args.repeats, "mamba_reference_loop": args.ref_backward_repeats},
        min(args.warmup, 1),
    )
    res = {
        "benchmark": "selective scan, CPU: papers_shared.ssm.ops.selective_scan vs mamba-ssm reference algorithm",
        "shape": {
            "batch": b,
            "d": d,
            "L": l,
            "N": n,
            "B_C": "variable (b, n, l)",
            "D": True,
            "z": True,
            "delta_bias": True,
            "softplus": True,
        },
        "max_abs_diff_check": err,
        "forward": fwd,
        "forward_backward": bwd,
        "speedup_forward": fwd["mamba_reference_loop"]["median_s"]
        / fwd["papers_shared.selective_scan"]["median_s"],
        "speedup_forward_backward": bwd["mamba_reference_loop"]["median_s"]
        / bwd["papers_shared.selective_scan"]["median_s"],
        "target": ">= 3x",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(
        f"forward:          ours {1000 * fwd['papers_shared.selective_scan']['median_s']:.1f} ms, reference {1000 * fwd['mamba_reference_loop']['median_s']:.1f} ms -> {res['speedup_forward']:.1f}x"
    )
    print(
        f"forward+backward: ours {1000 * bwd['papers_shared.selective_scan']['median_s']:.1f} ms, reference {1000 * bwd['mamba_reference_loop']['median_s']:.1f} ms -> {res['speedup_forward_backward']:.1f}x"
    )
    if torch.cuda.is_available():
        xc = make_inputs(b, d, l, n, device="cuda")
        gpu_fns = {"cuda_path": lambda **a: selective_scan(**a, delta_softplus=True), "cpu_path": None}
        gpu = time_interleaved(
            {"cuda_path": gpu_fns["cuda_path"]},
            lambda: xc,
            True,
            {"cuda_path": args.repeats},
            args.warmup,
            device="cuda",
        )
        cpu = time_interleaved({"cpu_path": ours}, lambda: x, True, {"cpu_path": args.repeats}, args.warmup)
        res["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "mamba_cuda_kernel": has_mamba_cuda(),
            "cuda_path_forward_backward_s": gpu["cuda_path"]["median_s"],
            "cpu_path_forward_backward_s": cpu["cpu_path"]["median_s"],
            "speedup": cpu["cpu_path"]["median_s"] / gpu["cuda_path"]["median_s"],
        }
        print(
            f"GPU ({res['gpu']['device']}, mamba kernel: {res['gpu']['mamba_cuda_kernel']}): {res['gpu']['speedup']:.1f}x over the CPU path"
        )
    else:
        res["gpu"] = {"skipped": "no CUDA device on this machine: the CUDA-path section did not run"}
        print("GPU section skipped: no CUDA device on this machine")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
