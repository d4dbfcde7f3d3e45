"""Mecoin's memory budget on the quick run's graph: the official 2000 epochs against an lr scaled to 200.

    uv run --no-sync python packages/mecoin/benchmarks/quick_budget.py [--out PATH] [--seeds 0,1,2]

MRaM values start at zero and receive gradient only on the retrieved rows; Adam moves a parameter by at
most about ``lr`` per step, so after ``E`` epochs a value can have moved by about ``lr * E``. The official
run (2000 epochs at lr 5e-4, ``test.sh``) allows ~1.0; 200 epochs at 5e-4 allow ~0.1, which is why the
quick run learnt almost nothing of the novel classes. Three budgets, everything else as the shipped
``quick`` config, Mecoin only (no baseline is run here):

* ``official``: 2000 epochs per session at lr 5e-4;
* ``short``: 200 epochs at lr 5e-4 (the old quick budget);
* ``scaled``: 200 epochs at lr 5e-3 (lr x 10 for 10x fewer epochs).

Per budget and seed: PD, final accuracy, base and novel accuracy after the last session, the mean absolute
MRaM value over the rows the test nodes retrieve, and the wall time. Writes
``docs/benchmarks/mecoin-quick-budget.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mecoin.data import build_task
from mecoin.experiment import build_method
from mecoin.quick import quick_config
from mecoin.trainer import pretrain_task, run_method, session_graphs
from papers_shared.reproduce import deterministic_run
from papers_shared.results import write_json

ROOT = Path(__file__).resolve().parents[3]
BUDGETS = {"official": (2000, 5e-4), "short": (200, 5e-4), "scaled": (200, 5e-3)}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "mecoin-quick-budget.json")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = quick_config()
    rows: dict[str, dict] = {k: {"epochs": e, "lr": lr, "runs": []} for k, (e, lr) in BUDGETS.items()}
    with deterministic_run(threads=1):
        for seed in seeds:
            task = build_task(base, seed)
            pre = pretrain_task(task, base, seed, torch.device("cpu"))
            for name, (epochs, lr) in BUDGETS.items():
                cfg = quick_config()
                cfg.mecoin.epochs_per_session, cfg.mecoin.lr = epochs, lr
                method = build_method("mecoin", cfg, seed)
                t0 = time.perf_counter()
                rep = run_method(task, pre, cfg, method, seed)
                seconds = time.perf_counter() - t0
                last = rep.acc_matrix[-1]
                graphs = session_graphs(task, cfg)
                ei, ew = graphs.for_classes(task.split.seen_classes(len(task.split) - 1))
                h = method.model.embed(task.data.x, ei, ew)
                test = torch.cat([s.test_idx for s in task.split])
                rows_hit = method.model.mram.flat_index(method.model.key_index(h[test])).unique()
                moved = float(method.model.mram.values.detach()[rows_hit].abs().mean())
                run = {
                    "seed": seed,
                    "pd": 100 * rep.pd,
                    "last": 100 * rep.last,
                    "base_last": 100 * last[0],
                    "novel_last": 100 * mean(last[1:]),
                    "mean_abs_value": moved,
                    "seconds": round(seconds, 2),
                }
                rows[name]["runs"].append(run)
                print(
                    f"seed {seed} {name:>8}: " + ", ".join(f"{k} {v:.3g}" for k, v in run.items()), flush=True
                )
    for row in rows.values():
        for key in ("pd", "last", "base_last", "novel_last", "mean_abs_value", "seconds"):
            row[key] = mean([r[key] for r in row["runs"]])
    record = {
        "budgets": rows,
        "seeds": seeds,
        "config": "quick (shipped), Mecoin only",
        "command": "uv run --no-sync python packages/mecoin/benchmarks/quick_budget.py",
        "threads": 1,
        "note": "seconds are wall time on a shared 2-core machine under load; their ratios are what to read",
    }
    write_json(record, args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
