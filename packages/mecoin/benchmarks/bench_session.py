"""Per-session update time and memory footprint: Mecoin vs Finetune on a 10k-node synthetic graph (issue #5).

    uv run --no-sync python packages/mecoin/benchmarks/bench_session.py [--out PATH] [--epochs 100]

Graph: ``make_csbm_graph`` with 20 classes x 500 nodes (10,000 nodes), 128 features; 10 base classes and
5 sessions of 2-way 5-shot. Both methods start from the same pre-trained GCN (h=128), run on the same
session runner and graphs, and train ``--epochs`` full-batch epochs per session (equal budget; the paper
uses 2000 for Mecoin). Mecoin uses the paper's memory size (C=100 codebooks x P=800 keys, d_k=14);
Finetune trains encoder + classifier on the current supports. Timed: ``fit_session`` of the
incremental sessions 1..T (session 0 is the warm-up), median per session; a session's update includes
the encoder forward(s), the training epochs and the best-validation bookkeeping. Memory: bytes of SMU
keys + MRaM values (Mecoin) against bytes of the parameters Finetune keeps (encoder + classifier).
Writes ``docs/benchmarks/mecoin-session.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mecoin.config import (
    BaselineConfig,
    CSBMConfig,
    EncoderConfig,
    ExperimentConfig,
    MecoinConfig,
    PretrainConfig,
    ProtocolConfig,
)
from mecoin.data import build_task
from mecoin.experiment import build_method
from mecoin.trainer import pretrain_task, run_method
from papers_shared.results import write_json

ROOT = Path(__file__).resolve().parents[3]


def bench_config(epochs: int, threads: int) -> ExperimentConfig:
    return ExperimentConfig(
        name="bench",
        dataset="csbm",
        seeds=[0],
        methods=["mecoin", "finetune"],
        device="cpu",
        progress=False,
        checkpoint_every_session=False,
        csbm=CSBMConfig(num_classes=20, nodes_per_class=500, feat_dim=128, p_in=0.004, p_out=0.0002),
        protocol=ProtocolConfig(base_classes=10, ways=2, shots=5, num_sessions=5),
        encoder=EncoderConfig(hidden=128),
        pretrain=PretrainConfig(max_epochs=30),
        mecoin=MecoinConfig(epochs_per_session=epochs),
        baselines=BaselineConfig(epochs=epochs, finetune_encoder=True),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "mecoin-session.json")
    ap.add_argument("--epochs", type=int, default=100, help="training epochs per session (both methods)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = bench_config(args.epochs, args.threads)
    device = torch.device("cpu")
    task = build_task(cfg, 0)
    t0 = time.perf_counter()
    pretrained = pretrain_task(task, cfg, 0, device)
    pretrain_s = time.perf_counter() - t0
    rows = {}
    for name in ("mecoin", "finetune"):
        rep = run_method(task, pretrained, cfg, build_method(name, cfg, 0), 0, device)
        fit = [log["fit_seconds"] for log in rep.extra["session_logs"]]
        rows[name] = {
            "session_fit_seconds": fit,
            "median_incremental_session_s": statistics.median(fit[1:]),
            "memory_bytes": rep.extra["memory_bytes"],
            "accs": rep.accs,
        }
    m, f = rows["mecoin"], rows["finetune"]
    ratio = m["median_incremental_session_s"] / f["median_incremental_session_s"]
    result = {
        "benchmark": "per-session update time and memory, Mecoin vs Finetune (issue #5)",
        "graph": {
            "nodes": int(task.data.num_nodes),
            "edges": int(task.data.edge_index.shape[1]),
            "features": 128,
        },
        "protocol": "10 base classes, 5 sessions of 2-way 5-shot",
        "epochs_per_session": args.epochs,
        "mecoin_memory": "C=100, P=800, d_k=14, K_tot=20",
        "pretrain_seconds": pretrain_s,
        "methods": rows,
        "time_ratio_mecoin_over_finetune": ratio,
        "within_2x_of_finetune": bool(ratio <= 2.0),
        "memory_ratio_mecoin_over_finetune": m["memory_bytes"]["total"] / f["memory_bytes"]["total"],
        "hardware": f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
        "note": "shared 2-core CPU under load from other jobs: absolute times are inflated, the ratio less so",
        "command": "uv run --no-sync python packages/mecoin/benchmarks/bench_session.py",
    }
    write_json(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "methods"}, indent=2))
    for name, r in rows.items():
        print(f"{name}: median session {r['median_incremental_session_s']:.3f}s, memory {r['memory_bytes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
