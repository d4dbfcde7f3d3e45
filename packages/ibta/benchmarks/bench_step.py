"""Measured cost of one surrogate forward/backward per image, and the wall time it implies for a table.

An attack step of X costs one forward/backward of the surrogate per image (S2I: ``ssa_n``; RAP-LS adds
one for the inner step from ``rap_late_start`` on); IBTA-X doubles the outer passes (two branches). With
the measured seconds per image-pass of each source architecture (random weights, 224 x 224, no download),
the table's cost is the sum over its cells, and N processes split every cell's batches evenly
(``ibta attack`` under ``torchrun``), so the wall time is about cost / N. This is an estimate: victim
evaluation (forward only) and data loading are left out. Writes ``docs/benchmarks/ibta-step.json``.

    uv run --no-sync python packages/ibta/benchmarks/bench_step.py [--device cuda] [--batch 48]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ibta.baselines import DEFAULT_STEPS
from ibta.config import ExperimentConfig
from papers_shared.attacks import load_model
from papers_shared.cli import resolve_config
from papers_shared.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def passes_per_image(base: str, ibta: bool, ssa_n: int = 20, late_start: int = 100) -> int:
    """Surrogate forward/backward passes per image of one attack call (official-code settings)."""
    steps = DEFAULT_STEPS[base]
    outer = steps * (ssa_n if base == "s2i" else 1)
    inner = max(0, steps - late_start) if base == "rap_logit_ti" else 0
    return outer * (2 if ibta else 1) + inner


def table_passes(cfg: ExperimentConfig, images: dict[str, int]) -> dict[str, int]:
    """Image-passes per source of a table: cells (attack, mode) x images of the mode x passes per image."""
    out = {}
    for src in cfg.sources:
        total = 0
        for att in cfg.attacks:
            ib = att.startswith("ibta_")
            base = att.removeprefix("ibta_")
            for mode in cfg.modes:
                total += images[mode] * passes_per_image(base, ib)
        out[src] = total
    return out


def seconds_per_image_pass(name: str, device: torch.device, batch: int, repeats: int) -> float:
    model = load_model(name, pretrained=False, device=device, download=False)
    x = torch.rand(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpus", type=int, default=8, help="processes of the estimate")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "ibta-step.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = load_config(ExperimentConfig, resolve_config("ibta", "exp1_cnn"))
    # IBTA ImageNet subset: 500 untargeted images; targeted: 10 targets x 450 images of the other classes
    images = {"untargeted": 500, "targeted": 4500}
    passes = table_passes(cfg, images)
    per_pass = {s: seconds_per_image_pass(s, device, args.batch, args.repeats) for s in cfg.sources}
    cost = sum(passes[s] * per_pass[s] for s in cfg.sources)
    result = {
        "table": "exp1_cnn",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seconds_per_image_pass": per_pass,
        "image_passes_per_source": passes,
        "one_process_hours": cost / 3600,
        f"estimated_hours_on_{args.gpus}_processes": cost / 3600 / args.gpus,
        "note": "estimate: surrogate forward/backward only (victim evaluation and data loading left out)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
