"""Fast-path inference throughput, storage per task and slow-path routing fraction.

Side by side in one process: SR-CIS with periodic restructuring (R = 2, peft ``cat`` and ``svd`` merges)
against keeping one LoRA per task forever (``per_task_lora``), on the digits tasks with the tiny ViT. After
each task the three memories are timed in interleaved repeats after a warm-up; throughput is the median. Writes JSON (default
``docs/benchmarks/sr-cis-fast_path.json``).

    uv run --frozen --no-sync python packages/sr-cis/benchmarks/bench_fast_path.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def main(argv=None) -> int:
    from papers_shared.device import seed_everything
    from papers_shared.results import write_json
    from sr_cis.experiment import build_method, prepare
    from sr_cis.quick import quick_experiment

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/benchmarks/sr-cis-fast_path.json")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = quick_experiment()
    cfg.data.num_tasks = args.tasks
    cfg.system.stm.epochs = args.epochs
    cfg.system.restructure.epochs = 2
    cfg.pretrain_epochs = 10
    seed_everything(0)
    bench, base, corpus = prepare(cfg, torch.device("cpu"))
    q = cfg.system.small
    x_te = bench.test.tensors[0][: args.batch]
    variants = {
        "per_task_lora": ("per_task_lora", None),
        "sr_cis_cat": ("sr_cis_fast_only", "cat"),
        "sr_cis_svd": ("sr_cis_fast_only", "svd"),
    }
    out: dict = {
        "setup": vars(args) | {"image_size": q.tiny.image_size, "lora_r": q.lora.r, "restructure_period": 2}
    }
    methods = {}
    for label, (method, merge) in variants.items():
        seed_everything(0)
        c = copy.deepcopy(cfg.system)
        if merge:
            c.restructure.merge = merge
        methods[label] = build_method(
            method, c, copy.deepcopy(base), None, bench.class_names, corpus_generator=corpus
        )
    per_task: dict[str, list] = {k: [] for k in variants}
    for t in range(len(bench.split)):
        for m in methods.values():  # the same task for every variant, then timing interleaved
            m.train_task(bench.task_train(t), t)
            m.after_task(t, len(bench.split))
        fast = {k: m.fast() for k, m in methods.items()}
        for f in fast.values():
            for _ in range(2):  # warm-up
                f(x_te)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, f in fast.items():
                t0 = time.perf_counter()
                f(x_te)
                times[k].append(time.perf_counter() - t0)
        for k, m in methods.items():
            st = m.storage_report()
            per_task[k].append(
                {
                    "task": t,
                    "regions": st["regions"],
                    "passes": fast[k](x_te[:1]).passes,
                    "lora_bytes": st["lora_bytes"],
                    "head_bytes": st["head_bytes"],
                    "text_bytes": st["text_bytes"],
                    "total_bytes": st["total_bytes"],
                    "throughput_img_s": args.batch / statistics.median(times[k]),
                }
            )
    rows = {}
    for k, m in methods.items():
        # routing fraction of CA-OAD on the final test stream (no large model attached: fast predictions kept)
        m.cfg.caoad.enabled = True
        res = m.evaluate(bench.test)
        rows[k] = {
            "per_task": per_task[k],
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
    write_json(out, args.out)
    print(json.dumps(out["ratios_vs_per_task_lora_last_task"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
