"""Fast-path inference throughput, storage per task and slow-path routing fraction (issue: benchmark).

Side by side in one process: SR-CIS with periodic restructuring (R = 2, peft ``cat`` and ``svd`` merges)
against keeping one LoRA per task forever (``per_task_lora``), on the digits tasks with the tiny ViT.
Throughput is the median over repeats after a warm-up. Writes JSON (default
``docs/benchmarks/sr-cis-fast_path.json``).

    uv run --frozen --no-sync python packages/sr-cis/benchmarks/bench_fast_path.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    from papers_shared.data import stratified_split
    from papers_shared.device import seed_everything
    from papers_shared.results import to_jsonable
    from sr_cis.config import QuickConfig
    from sr_cis.data import load_benchmark
    from sr_cis.experiment import build_method, pretrain_backbone
    from sr_cis.quick import quick_config
    from sr_cis.small_model import build_small_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/benchmarks/sr-cis-fast_path.json")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = QuickConfig(num_tasks=args.tasks, stm_epochs=args.epochs, restructure_epochs=2)
    cfg = quick_config(q)
    seed_everything(0)
    bench = load_benchmark(cfg.data, image_size=q.image_size)
    rest, pre = stratified_split(bench.train_labels, test_frac=q.pretrain_frac, seed=0)
    from torch.utils.data import Subset

    base = build_small_model(cfg.system.small)
    pretrain_backbone(base, Subset(bench.train, pre.tolist()), 10, 1e-3, 32)
    x_te = bench.test.tensors[0][: args.batch]
    variants = {
        "per_task_lora": ("per_task_lora", None),
        "sr_cis_cat": ("sr_cis_fast_only", "cat"),
        "sr_cis_svd": ("sr_cis_fast_only", "svd"),
    }
    out: dict = {
        "setup": vars(args) | {"image_size": q.image_size, "lora_r": q.lora_r, "restructure_period": 2}
    }
    rows = {}
    for label, (method, merge) in variants.items():
        seed_everything(0)
        c = copy.deepcopy(cfg.system)
        if merge:
            c.restructure.merge = merge
        m = build_method(method, c, copy.deepcopy(base), None, bench.class_names)
        per_task = []
        keep = set(rest.tolist())
        for t in range(len(bench.split)):
            idx = [i for i in bench.split[t].train_idx.tolist() if i in keep]
            m.train_task(Subset(bench.train, idx), t)
            m.after_task(t, len(bench.split))
            st = m.memory.storage_report(m.model)
            fast = m.fast()
            for _ in range(2):
                fast(x_te)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fast(x_te)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            per_task.append(
                {
                    "task": t,
                    "regions": st["regions"],
                    "passes": fast(x_te[:1]).passes,
                    "lora_bytes": st["lora_bytes"],
                    "head_bytes": st["head_bytes"],
                    "text_bytes": st["text_bytes"],
                    "total_bytes": st["total_bytes"],
                    "throughput_img_s": args.batch / med,
                }
            )
        # routing fraction of CA-OAD on the final test stream (no large model attached: fast predictions kept)
        m.cfg.caoad.enabled = True
        res = m.evaluate(bench.test)
        rows[label] = {
            "per_task": per_task,
            "route_frac": res["route_frac"],
            "final_acc_fast": res["acc_fast"],
        }
    out["results"] = rows
    ref = rows["per_task_lora"]["per_task"][-1]
    out["ratios_vs_per_task_lora_last_task"] = {
        k: {
            "throughput": v["per_task"][-1]["throughput_img_s"] / ref["throughput_img_s"],
            "total_bytes": v["per_task"][-1]["total_bytes"] / ref["total_bytes"],
            "passes": v["per_task"][-1]["passes"] / ref["passes"],
        }
        for k, v in rows.items()
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(to_jsonable(out), indent=2) + "\n")
    print(json.dumps(to_jsonable(out["ratios_vs_per_task_lora_last_task"]), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
