"""Selective-scan benchmark (ours): the fused CPU loop against one streaming ``exp`` pass and the chunked scan.

CPU (default), one thread, at ``L=2048, d=256, N=16`` (batch 1, variable ``B``/``C``, ``D``, ``z``,
``delta_bias``, softplus): every row is timed in interleaved repeats (one repeat of each row in turn), the
medians are compared with the lower bound of one streaming ``exp`` pass over the ``b*d*l*n`` decays
(``torch.exp(x, out=buf)``, and ``torch.exp(x)`` with its allocation as the issue measured it).
``--device cuda``: the CUDA rows (mamba-ssm's kernel when it imports, the chunked PyTorch scan on the GPU
otherwise) for ``scripts/gpu_check.sh``.

Run::

    uv run --no-sync python -m papers_shared.ssm.ops.benchmark --out docs/benchmarks/ssm-scan.json
    uv run --no-sync python -m papers_shared.ssm.ops.benchmark --device cuda --out docs/benchmarks/ssm-scan-gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from papers_shared.results import write_json
from papers_shared.ssm.ops.selective_scan import (
    _ChunkedScan,
    _default_chunk,
    fused_available,
    has_mamba_cuda,
    selective_scan,
    selective_scan_chunked,
    selective_scan_fused,
    selective_scan_ref,
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _inputs(b: int, d: int, l: int, n: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {
        "u": torch.randn(b, d, l, generator=g),
        "delta": torch.randn(b, d, l, generator=g) * 0.5,
        "A": -torch.rand(d, n, generator=g) * 2 - 0.1,
        "B": torch.randn(b, n, l, generator=g),
        "C": torch.randn(b, n, l, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, l, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.1,
    }
    return {k: v.to(device) for k, v in x.items()}


def _forward(fn: Callable, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return fn(**x, delta_softplus=True)

    return run


def _forward_backward(fn: Callable, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    leaves = {k: v.clone().requires_grad_(k in ("u", "delta", "A", "B", "C")) for k, v in x.items()}

    def run():
        for v in leaves.values():
            v.grad = None
        fn(**leaves, delta_softplus=True).sum().backward()

    return run


def _time(rows: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, dict]:
    """Interleaved repeats after one warm-up call of each row: wall-clock medians (``median_s``) and,
    for the CPU rows, the calling thread's CPU time (``median_cpu_s``, robust on a loaded machine)."""
    for f in rows.values():
        f()
    sync()
    wall: dict[str, list[float]] = {k: [] for k in rows}
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(repeats):
        for name, f in rows.items():
            sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            f()
            sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return {
        k: {
            "median_s": statistics.median(wall[k]),
            "median_cpu_s": statistics.median(cpu[k]),
            "all_s": wall[k],
        }
        for k in rows
    }


def _compiled_chunk_loops(x: dict[str, torch.Tensor]) -> Callable[[], object]:
    """``torch.compile`` of the chunked scan's loops (its forward, called with a stand-in context)."""

    class _Ctx:
        def save_for_backward(self, *a):
            pass

        def mark_non_differentiable(self, *a):
            pass

    dt = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][None, :, None])
    T = _default_chunk(x["u"].shape[-1])

    def loops(dt, u, A, B, C):
        return _ChunkedScan.forward(_Ctx(), dt, u, A, B, C, T)[0]

    compiled = torch.compile(loops, dynamic=False)
    args = (dt, x["u"], x["A"], x["B"], x["C"])

    def run():
        with torch.no_grad():
            return compiled(*args)

    return run


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def run_cpu(args) -> dict:
    torch.set_num_threads(args.threads)
    b, d, l, n = args.batch, args.d, args.length, args.state
    x = _inputs(b, d, l, n, "cpu")
    decays = torch.randn(b, d, l, n).clamp_max(0)
    buf = torch.empty_like(decays)
    fused = fused_available()
    fwd = {
        "exp_pass": lambda: torch.exp(decays, out=buf),
        "exp_pass_allocating": lambda: torch.exp(decays),
        "chunked": _forward(selective_scan_chunked, x),
    }
    bwd = {"chunked": _forward_backward(selective_scan_chunked, x)}
    if fused:
        fwd["fused"] = _forward(selective_scan_fused, x)
        bwd["fused"] = _forward_backward(selective_scan_fused, x)
    if args.with_ref:
        fwd["reference_loop"] = _forward(selective_scan_ref, x)
    compile_s = None
    if args.with_compile:  # compiles for minutes at l=2048: timed once, outside the rows
        t0 = time.perf_counter()
        fwd["compiled_chunk_loops"] = _compiled_chunk_loops(x)
        fwd["compiled_chunk_loops"]()
        compile_s = time.perf_counter() - t0
    check = {}
    with torch.no_grad():
        y_ref = selective_scan_ref(**x, delta_softplus=True)
        check["chunked_vs_ref"] = _max_diff(selective_scan_chunked(**x, delta_softplus=True), y_ref)
        if fused:
            check["fused_vs_ref"] = _max_diff(selective_scan_fused(**x, delta_softplus=True), y_ref)
    f = _time(fwd, args.repeats, lambda: None)
    fb = _time(bwd, max(3, args.repeats // 2), lambda: None)

    def ratio_set(key: str) -> dict[str, float]:
        exp_s = f["exp_pass"][key]
        r = {f"forward_{k}_over_exp_pass": v[key] / exp_s for k, v in f.items() if k != "exp_pass"}
        r.update({f"forward_backward_{k}_over_exp_pass": v[key] / exp_s for k, v in fb.items()})
        if fused:
            r["forward_chunked_over_fused"] = f["chunked"][key] / f["fused"][key]
            r["forward_backward_chunked_over_fused"] = fb["chunked"][key] / fb["fused"][key]
        return r

    ratios, ratios_cpu = ratio_set("median_s"), ratio_set("median_cpu_s")
    return {
        "ratios_cpu_time": ratios_cpu,
        "compile_s": compile_s,
        "forward": f,
        "forward_backward": fb,
        "ratios": ratios,
        "target": "forward fused <= 2x one streaming exp pass (issue 20.4)",
        "target_met": bool(fused and ratios["forward_fused_over_exp_pass"] <= 2.0),
        "max_abs_diff_vs_reference": check,
        "fused_available": fused,
    }


def run_cuda(args) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device")
    b, d, l, n = args.batch, args.d, args.length, args.state
    x = _inputs(b, d, l, n, "cuda")
    kernel = has_mamba_cuda()

    def auto(**kw):
        return selective_scan(**kw)

    fwd = {"auto": _forward(auto, x), "chunked": _forward(selective_scan_chunked, x)}
    bwd = {"auto": _forward_backward(auto, x), "chunked": _forward_backward(selective_scan_chunked, x)}
    sync = torch.cuda.synchronize
    with torch.no_grad():
        xc = {k: v.cpu() for k, v in x.items()}
        check = {
            "auto_vs_cpu_ref": _max_diff(
                auto(**x, delta_softplus=True).cpu(), selective_scan_ref(**xc, delta_softplus=True)
            )
        }
    f = _time(fwd, args.repeats, sync)
    fb = _time(bwd, max(3, args.repeats // 2), sync)
    return {
        "forward": f,
        "forward_backward": fb,
        "auto_backend": "mamba-ssm CUDA kernel" if kernel else "chunked PyTorch scan (kernel not importable)",
        "ratios": {
            "forward_chunked_over_auto": f["chunked"]["median_s"] / f["auto"]["median_s"],
            "forward_backward_chunked_over_auto": fb["chunked"]["median_s"] / fb["auto"]["median_s"],
        },
        "max_abs_diff": check,
        "gpu": torch.cuda.get_device_name(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--with-ref", action="store_true", help="add the sequential reference loop (slow)")
    p.add_argument(
        "--with-compile",
        action="store_true",
        help="add torch.compile of the chunk loops (minutes to compile)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    res = run_cuda(args) if args.device == "cuda" else run_cpu(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = {
        "benchmark": f"selective scan, {args.device}: papers_shared.ssm.ops (fused CPU loop, chunked scan)",
        "command": "uv run --no-sync python -m papers_shared.ssm.ops.benchmark"
        + (" --device cuda" if args.device == "cuda" else ""),
        "shape": {
            "batch": args.batch,
            "d": args.d,
            "L": args.length,
            "N": args.state,
            "B_C": "variable (b, n, l)",
        },
        "threads": args.threads if args.device == "cpu" else None,
        "repeats": args.repeats,
        "timing": "interleaved repeats after one warm-up call per row; medians of wall time (ratios) and "
        "of the thread's CPU time (ratios_cpu_time)",
        "rows": {
            "exp_pass": "torch.exp over the (b, d, l, n) decays into a preallocated buffer: the lower bound",
            "exp_pass_allocating": "the same with a fresh output tensor (as issue 20 measured it)",
            "fused": "selective_scan_fused: compiled C++ loop (_scan_cpu.cpp)",
            "chunked": "selective_scan_chunked: the previous default CPU scan",
            "compiled_chunk_loops": "torch.compile of the chunked scan's loops (--with-compile)",
            "reference_loop": "selective_scan_ref, mamba-ssm's reference algorithm (--with-ref)",
        },
        "environment": {
            "torch": torch.__version__,
            "cpu": _cpu_model(),
            "load_average_1min": load,
        },
        **res,
    }
    for section in ("forward", "forward_backward"):
        for k, v in res[section].items():
            print(f"{section:17s} {k:22s} {1000 * v['median_s']:9.2f} ms")
    for k, v in res["ratios"].items():
        print(f"{k:45s} {v:7.2f}")
    if args.out:
        write_json(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
