"""Train-step time of FSG over STE on CIFAR ResNet-20 (batch 128, 3x32x32 random tensors, CPU).

Side by side in one process: STE (torch Adam), MetaQuant-MultiFC, FSG with the paper-size slow net
(Mamba d_state 16, d_conv 8, expand 100, HGS L = 5) and FSG with the small slow net of the digits
demo (d_state 4, d_conv 4, expand 4). Each method is warmed up (its HGS windows pre-filled
to steady-state sequence lengths), then ``--repeats`` rounds run every method one step in turn (same
machine load for all) and the medians are reported. For FSG the step is
split into phases (meta-gradient generation = fast net + HGS + slow net; look-ahead forward; backward;
optimizer step) and one step is profiled (top operators by self CPU time).

    uv run python packages/fsg-bnn/benchmarks/bench_step.py [--repeats 3] [--full] [--out ...]

Issue 20 target: FSG step <= 1.5x STE with the exact options (small slow net). ``--full`` adds the
paper-size slow net (minutes per step on CPU; a CUDA-scale setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fsg_bnn as fb
from papers_shared.checkpoints import atomic_write_text

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"d_state": 4, "d_conv": 4, "expand": 4}


def _setup(method: str, **kw):
    torch.manual_seed(0)
    model = fb.binarize(fb.resnet20())
    opt = fb.build_optimizer(model, fb.OptimConfig(method=method, **kw))
    return model, opt


def _phases(model, opt, x, y) -> dict[str, float]:
    t = {}
    t0 = time.perf_counter()
    if isinstance(opt, fb.MetaGradientOptimizer):
        opt._ensure_generated()
    t1 = time.perf_counter()
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    opt.step()
    t4 = time.perf_counter()
    t.update(generate=t1 - t0, forward=t2 - t1, backward=t3 - t2, step=t4 - t3, total=t4 - t0)
    return t


def _prefill_hgs(opt) -> None:
    """Fill every HGS window to ``L - 1`` gradients (random, of the right sizes) so the next steps
    run at steady-state sequence lengths without ``L`` slow warm-up steps."""
    hgs = getattr(opt, "hgs", None)
    if hgs is None:
        return
    g = torch.Generator().manual_seed(1)
    for name, layer in opt.layers:
        while hgs.count(name) < hgs.length - 1:
            hgs.push(name, 1e-3 * torch.randn(layer.weight.shape, generator=g))


def bench_interleaved(specs: dict[str, tuple[str, dict]], x, y, repeats: int) -> dict[str, dict]:
    """Build every method, warm each up (2 steps, HGS pre-filled), then time ``repeats`` rounds in
    which every method runs one step in turn (same machine load for all); medians per phase."""
    setups = {}
    for label, (method, kw) in specs.items():
        model, opt = _setup(method, **kw)
        model.train()
        _phases(model, opt, x, y)
        _prefill_hgs(opt)
        _phases(model, opt, x, y)
        setups[label] = (model, opt)
    runs: dict[str, list[dict]] = {k: [] for k in specs}
    for _ in range(repeats):
        for label, (model, opt) in setups.items():
            runs[label].append(_phases(model, opt, x, y))
    out = {}
    for label, rs in runs.items():
        out[label] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        # amortised cost (slow_net_refresh > 1 alternates cheap and full steps, which a median hides)
        out[label]["total_mean"] = statistics.fmean(r["total"] for r in rs)
        out[label]["method"], out[label]["options"] = specs[label]
    return out


def profile_fsg(x, y, **kw) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model, opt = _setup("fsg", **kw)
    _phases(model, opt, x, y)
    _prefill_hgs(opt)
    _phases(model, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _phases(model, opt, x, y)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [
        {"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count} for e in rows
    ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _scan_path() -> str:
    """Which CPU selective scan ``backend="auto"`` runs here (the shared fused loop when it compiles)."""
    try:
        from papers_shared.ssm.ops.selective_scan import fused_available
    except ImportError:
        return "chunked (papers_shared has no fused CPU scan)"
    return "fused" if fused_available() else "chunked (the fused CPU scan does not compile here)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--full", action="store_true", help="add the paper-size slow net (very slow on CPU)")
    p.add_argument("--profile-small", action="store_true", help="profile the small slow net only")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "fsg-bnn-step.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    specs = {
        "ste": ("ste", {}),
        "multifc": ("multifc", {}),
        "fsg_small_slow_net": ("fsg", SMALL),
        # the documented approximation (off in every paper config): slow net every 5th step
        "fsg_small_refresh5_approx": ("fsg", {**SMALL, "slow_net_refresh": 5}),
    }
    if args.full:
        specs["fsg_paper_slow_net"] = ("fsg", {})
    results = bench_interleaved(specs, x, y, args.repeats)
    ste = results["ste"]["total"]
    ratios = {k: round(v["total"] / ste, 2) for k, v in results.items()}
    ratios_mean = {k: round(v["total_mean"] / results["ste"]["total_mean"], 2) for k, v in results.items()}
    prof_kw = SMALL if not args.full or args.profile_small else {}
    report = {
        "benchmark": f"train-step time over STE, CIFAR ResNet-20, batch {args.batch}, 3x32x32 random tensors",
        "command": "uv run python packages/fsg-bnn/benchmarks/bench_step.py "
        + " ".join(argv or sys.argv[1:]),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": _cpu_model(),
        "target_ratio_fsg_over_ste": 1.5,
        "scan": _scan_path(),
        "ratio_over_ste": ratios,
        "ratio_over_ste_of_mean_step": ratios_mean,
        "seconds_per_step": {
            k: {kk: round(vv, 4) for kk, vv in v.items() if isinstance(vv, float)} for k, v in results.items()
        },
        "profile_fsg_top_ops": profile_fsg(x, y, **prof_kw),
        "profile_config": "small slow net" if prof_kw else "paper slow net",
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ratio_over_ste": ratios, "ratio_over_ste_of_mean_step": ratios_mean}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
