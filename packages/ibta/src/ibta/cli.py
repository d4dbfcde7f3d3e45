"""ibta: information-bottleneck transferable attacks (IBTA, Qi et al., IEEE SPL 2024) and MINE.

attack (= run)  a transfer table from a config: results.csv, resumable (torchrun splits every cell's batches)
ablate          one-at-a-time lambda / gamma / sigma sweep, one results.csv per value
eval            summarise a results CSV: X vs IBTA-X success per source -> victim
mine            MINE estimate of I(delta; X) for one attack
"""

from __future__ import annotations

from pathlib import Path

from papers_shared.cli import CLI, Context, arg
from papers_shared.distributed import is_main_process

from .config import ATTACK_NAMES, ExperimentConfig

cli = CLI(
    "ibta",
    ExperimentConfig,
    description=__doc__,
    keys={"seed": "attack.seed", "device": "device", "out": "out_dir"},
)
RUN_FLAGS = ("out", "no-progress", "seed", "device")
VERBOSE = arg("--verbose", action="store_true", help="print every cell's success rate")


def attack(cfg: ExperimentConfig, ctx: Context) -> None:
    from .experiment import run_experiment, summarize

    rows = run_experiment(cfg, log=print if ctx.args.verbose else None, progress=ctx.progress)
    if is_main_process():
        print(summarize(rows))
        print(f"results: {Path(cfg.out_dir) / cfg.name / 'results.csv'}")


for _name in ("attack", "run"):
    cli.command(_name, help="run a transfer table (results.csv, resumable)", args=[VERBOSE], flags=RUN_FLAGS)(
        attack
    )


@cli.command("ablate", help="lambda / gamma / sigma sweep around the config", args=[VERBOSE], flags=RUN_FLAGS)
def ablate(cfg: ExperimentConfig, ctx: Context) -> None:
    from .experiment import run_ablation, summarize_ablation

    rows = run_ablation(cfg, log=print if ctx.args.verbose else None, progress=ctx.progress)
    print(summarize_ablation(rows))


@cli.command(
    "eval",
    help="summarise a results CSV (validated column by column)",
    config=False,
    flags=(),
    args=[arg("--csv", type=Path, required=True, help="results.csv written by `ibta attack`")],
)
def evaluate(ctx: Context) -> None:
    from .experiment import read_results, summarize

    print(summarize(read_results(ctx.args.csv)))


@cli.command(
    "mine",
    help="MINE estimate of I(delta; X) for one attack on the config's data",
    flags=("seed", "device"),
    args=[
        arg("--attack", required=True, choices=ATTACK_NAMES, help="attack name"),
        arg("--source", default=None, help="surrogate (default: the first of sources)"),
    ],
)
def mine(cfg: ExperimentConfig, ctx: Context) -> dict:
    from .analysis import mine_for_config

    return mine_for_config(cfg, ctx.args.attack, ctx.args.source)


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
