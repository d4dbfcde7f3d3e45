"""Time the unit of work of a merging table at ViT-B/32 scale, to estimate a table's wall time on N GPUs.

    python packages/t-switch/benchmarks/bench_table_cell.py [--device cuda] [--out PATH]

A randomly initialised CLIP ViT-B/32 image tower (no download; the weights' values do not change the
time) and 8 random task vectors: one forward of a 256-image batch with T-Switch's assembled weights, and
one Auto-Switch batch (k-NN routing + assembly of theta_0 + sum_k w_k tau^_k + forward). Medians over
repeats after warm-up. Image decoding/preprocessing is not included (it runs on the data loader's CPUs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from papers_shared.results import environment_info, write_json
from t_switch import AutoSwitch, BinarySwitch, KNNRouter, SwitchedModel, TaskSwitchBank

ROOT = Path(__file__).resolve().parents[3]


def _time(fn, device, repeats=10, warmup=3):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/t-switch-table-cell.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, projection_dim=512)  # fmt: skip
    model = CLIPVisionModelWithProjection(cfg).eval().to(device)
    g = torch.Generator().manual_seed(1)
    switches = {}
    for k in range(args.tasks):
        tv = {
            n: 1e-3 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if p.dim() >= 1
        }
        switches[f"t{k}"] = BinarySwitch.from_task_vector(tv, 0.6)
    bank = TaskSwitchBank(model, switches, cache_size=0)
    switched = SwitchedModel(model, bank)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    feat = lambda pixel_values: model(pixel_values=pixel_values).image_embeds  # noqa: E731
    router = KNNRouter(10).fit(
        torch.randn(100 * args.tasks, 512), torch.arange(args.tasks).repeat_interleave(100)
    )
    auto = AutoSwitch(switched, router, feat)
    with torch.no_grad():
        t_forward = _time(lambda: model(pixel_values=x), device)
        bank.cache_size = 2
        t_tswitch = _time(lambda: switched(pixel_values=x, weights="t0"), device)  # assembled once, cached
        bank.cache_size = 0
        t_auto = _time(lambda: auto(pixel_values=x), device)  # the bank copies the signs to the device once
    res = {
        "device": str(device),
        "batch": args.batch,
        "tasks": args.tasks,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_s": t_forward,
        "t_switch_batch_s": t_tswitch,
        "auto_switch_batch_s": t_auto,
        "environment": environment_info(),
    }
    write_json(res, args.out)
    print(res)
    return res


if __name__ == "__main__":
    main()
