"""SR-CIS: Self-Reflective Complementary Incremental System (arXiv 2408.01970).

train         run a paper table (every method of `methods`; a checkpoint per task, --resume);
              under torchrun / accelerate launch it trains data-parallel
eval          evaluate a saved SR-CIS memory (--state: SRCIS.save safetensors or a run checkpoint)
import-table  read a LAMDA-PILOT / InfLoRA results table (CSV/JSON) and print its rows
quick, show-config, list-configs (built in)
"""

from __future__ import annotations

from pathlib import Path

from papers_shared.cli import CLI, Context, arg
from sr_cis.config import ExperimentConfig

__all__ = ["cli", "main"]

KEYS = {"seed": "seed", "out": "out_dir", "device": "system.device"}  # common flags -> config keys
cli = CLI("sr-cis", ExperimentConfig, description=__doc__, keys=KEYS)


@cli.command("train", help="run a paper table from a config; writes <out>/<name>/results.json")
def train(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from papers_shared.config import save_config
    from papers_shared.distributed import is_main_process
    from sr_cis.experiment import run_experiment

    cfg.system.progress = cfg.system.progress and ctx.progress
    out = ctx.out / cfg.name
    if is_main_process():
        save_config(cfg, out / "config.yaml")
    res = run_experiment(cfg, out_dir=out, resume=ctx.resume)
    if not is_main_process():
        return None  # rank 0 prints the summary
    keys = ("final_acc", "avg_acc", "final_acc_fast", "forgetting_acc", "route_frac")
    return {"results": str(out / "results.json")} | {k: {x: v[x] for x in keys} for k, v in res.items()}


@cli.command(
    "eval",
    help="evaluate a saved SR-CIS memory on the test split of a config",
    args=[
        arg(
            "--state",
            type=Path,
            required=True,
            help="SRCIS.save file (.safetensors) or a run checkpoint (.pt)",
        )
    ],
    flags=("seed", "device", "no-progress"),
)
def evaluate(cfg: ExperimentConfig, ctx: Context) -> dict:
    from sr_cis.experiment import evaluate_memory

    return evaluate_memory(cfg, ctx.args.state)


@cli.command("import-table", help="read an external baselines results table (CSV/JSON)", config=False, flags=(),
             args=[arg("file", type=Path, help="CSV or JSON with method, dataset, final_acc[, avg_acc, setting]")])  # fmt: skip
def import_table(ctx: Context) -> list:
    from sr_cis.baselines import import_results_table

    return import_results_table(ctx.args.file)


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
