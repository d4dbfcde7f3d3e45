"""Storage ratio vs drop ratio on a ViT-B/32-shaped task vector, and wall time to compress, save, load
and assemble a 100M-parameter model on CPU (issue #4).

    uv run python packages/t-switch/benchmarks/bench_storage.py [--out PATH] [--repeats 3]

Task vector: the tensor shapes of the CLIP ViT-B/32 image tower (87.8M entries); entries are Student-t
(df=3, heavy tailed like fine-tuning deltas) with a log-normal per-tensor scale. Ratios are counted
from the format (no packing needed); timings are medians over ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from papers_shared.checkpoints import atomic_write_text
from t_switch import BinarySwitch, TaskSwitchBank, load_switches, save_switches, storage_report, task_vector

ROOT = Path(__file__).resolve().parents[3]


def vit_b32_shapes(blocks: int = 12, width: int = 768) -> dict[str, tuple[int, ...]]:
    s = {"conv1.weight": (width, 3, 32, 32), "class_embedding": (width,), "positional_embedding": (50, width)}
    s.update({"ln_pre.weight": (width,), "ln_pre.bias": (width,)})
    for b in range(blocks):
        p = f"transformer.resblocks.{b}."
        s.update({
            p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
            p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
            p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
            p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
            p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
        })  # fmt: skip
    s.update({"ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, 512)})
    return s


def synthetic_tv(shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(3.0)
    torch.manual_seed(seed)
    out = {}
    for n, sh in shapes.items():
        scale = 1e-4 * math.exp(0.5 * float(torch.randn(1, generator=g)))
        out[n] = (t.sample(sh) * scale).float()
    return out


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, object]:
    res = None
    for _ in range(warmup):
        res = fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), res


def time_layout(layout: str, pre, ft, path: Path, repeats: int) -> dict:
    """Median seconds of each stage for one bit layout (drop ratio 0.6, group size 4)."""
    nbig = sum(v.numel() for v in pre.values())
    t_tv, tvb = median_time(lambda: task_vector(pre, ft), repeats)
    t_sw, sw = median_time(lambda: BinarySwitch.from_task_vector(tvb, 0.6), repeats)
    t_save, _ = median_time(lambda: save_switches(path, {"task": sw}, layout=layout), repeats)
    t_load, f = median_time(lambda: load_switches(path), repeats)
    bank = TaskSwitchBank(pre, f.switches, cache_size=0)
    t_asm, _ = median_time(lambda: bank.params("task"), repeats)
    ok = all(torch.equal(f.switches["task"].signs[k], sw.signs[k]) for k in sw.signs)
    return {
        "task_vector_s": t_tv, "drop_binarize_s": t_sw, "pack_save_s": t_save, "load_unpack_s": t_load,
        "assemble_s": t_asm, "compress_s": t_tv + t_sw + t_save,
        "compress_plus_assemble_s": t_tv + t_sw + t_save + t_asm,
        "file_mb": path.stat().st_size / 2**20, "fp32_task_vector_mb": 4 * nbig / 2**20, "lossless_round_trip": ok,
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/t-switch-storage.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ratios", default="0,0.3,0.5,0.6,0.7,0.8,0.9,0.95,0.99")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    # 1) storage ratio vs r on a ViT-B/32-shaped task vector (group size 4, fp32 baseline)
    shapes = vit_b32_shapes()
    tv = synthetic_tv(shapes)
    n = sum(v.numel() for v in tv.values())
    rows = []
    for r in [float(x) for x in args.ratios.split(",")]:
        sw = BinarySwitch.from_task_vector(tv, r)
        rep = {lay: storage_report({"t": sw}, 4, lay)["total"] for lay in ("interleaved", "planar")}
        tot = rep["interleaved"]
        rows.append({
            "drop_ratio": r, "density": tot["density"], "bits_per_entry": tot["bits_per_entry"],
            "pct_fp32_bits": tot["pct_fp32_bits"], "pct_fp16_bits": tot["pct_fp16_bits"],
            "pct_fp32_payload": tot["pct_fp32_payload"],
            "pct_fp32_total_interleaved": tot["pct_fp32_total"], "pct_fp32_total_planar": rep["planar"]["pct_fp32_total"],
            "pct_fp32_entropy_bound": tot["pct_fp32_entropy"],
            "pct_fp32_naive_2bit": 100.0 * 2 / 32,
        })  # fmt: skip
        print(f"r={r:.2f} density={tot['density']:.3f} bits/entry={tot['bits_per_entry']:.3f} "
              f"= {tot['pct_fp32_bits']:.2f}% of fp32 (entropy bound {tot['pct_fp32_entropy']:.2f}%)")  # fmt: skip
    K = 8
    emr_pct = 100.0 * (32 + K) / (K * 32)  # unified fp32 vector + one mask bit per task, per task vector
    del tv

    # 2) 100M-parameter model: compress (task vector + drop + binarize + pack), save, load, assemble
    big = vit_b32_shapes(blocks=14, width=768)
    big["extra.weight"] = (4 * 768, 768)
    pre = synthetic_tv(big, seed=1)
    for v in pre.values():
        v.mul_(1e3)
    delta = synthetic_tv(big, seed=2)
    ft = {k: pre[k] + delta[k] for k in pre}
    del delta
    nbig = sum(v.numel() for v in pre.values())
    timings = {"params": nbig}
    tmp = Path(tempfile.mkdtemp())
    for layout in ("interleaved", "planar"):
        timings[layout] = time_layout(layout, pre, ft, tmp / f"sw_{layout}.safetensors", args.repeats)
        print(layout, json.dumps(timings[layout]))
    result = {
        "benchmark": "t-switch storage ratio and 100M-parameter compress/save/load/assemble",
        "command": "uv run python packages/t-switch/benchmarks/bench_storage.py",
        "task_vector": f"ViT-B/32 image-tower shapes, {n} entries, Student-t(df=3) x log-normal per-tensor scale",
        "group_size": 4, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "storage_vs_drop_ratio": rows, "emr_pct_fp32_per_task_K8": emr_pct, "timings_100M": timings,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
