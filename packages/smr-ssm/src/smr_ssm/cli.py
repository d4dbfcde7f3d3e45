"""smr-ssm: State Memory Replay (SMR) for S4D/S4/S5/Mamba/Mega state-space models under non-uniform sampling.

Commands: lm (WikiText-103 perplexity table), lra (Long Range Arena table), nss (sampling-shift experiment),
bench (training-speed benchmark); built in: quick (the quick reproduction), show-config, list-configs.
lm and lra also run under torchrun / accelerate launch (data-parallel, global batch = train.batch_size).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from papers_shared import distributed as dist
from papers_shared.cli import CLI, Context, arg
from papers_shared.results import format_claims
from smr_ssm.config import ExperimentConfig

__all__ = ["cli", "main"]

cli = CLI(
    "smr-ssm",
    ExperimentConfig,
    description=__doc__,
    keys={"seed": "train.seed", "device": "train.device", "out": "out_dir"},
)
TASKS = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]


def _table(res: dict) -> dict | None:
    return {k: v for k, v in res.items() if k != "history"} if dist.is_main_process() else None


def _set(cfg: ExperimentConfig, section: str, **given) -> ExperimentConfig:
    """``cfg`` with the given (non-empty) fields of one section replaced (validated again)."""
    new = dataclasses.replace(getattr(cfg, section), **{k: v for k, v in given.items() if v})
    return dataclasses.replace(cfg, **{section: new})


INIT = arg(
    "--init", type=Path, help="start weights (safetensors, save_pretrained folder, smr-ssm checkpoint)"
)


@cli.command("lm", help="train and evaluate a language model on WikiText-103 (perplexity table)", args=[INIT])
def lm(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from smr_ssm.experiment import run_lm

    cfg.require("lm")
    return _table(run_lm(cfg, resume=ctx.resume, progress=ctx.progress, init=ctx.args.init))


@cli.command(
    "lra",
    help="train and evaluate one Long Range Arena task (accuracy table)",
    args=[
        arg("--task", choices=TASKS, help="sets lra.task"),
        arg("--data-dir", help="sets lra.data_dir"),
        INIT,
    ],
)
def lra(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from smr_ssm.experiment import run_lra

    cfg.require("lra")
    cfg = _set(cfg, "lra", task=ctx.args.task, data_dir=ctx.args.data_dir)
    return _table(run_lra(cfg, resume=ctx.resume, progress=ctx.progress, init=ctx.args.init))


@cli.command("nss", help="sampling-shift experiment (--seed N runs that one seed); writes <out>/nss.json")
def nss(cfg: ExperimentConfig, ctx: Context) -> int:
    from smr_ssm.experiment import run_nss

    cfg.require("nss")
    res = run_nss(
        _set(cfg, "nss", seeds=ctx.seed is not None and [ctx.seed]), progress=ctx.progress, out=ctx.out
    )
    print(format_claims(res))
    return 0


@cli.command(
    "bench",
    help="forward + backward time of layers with and without SMR; writes <out>/bench.json",
    args=[
        arg("--layers", type=lambda s: s.split(","), help="comma-separated specs, e.g. s4d,s4d+smr"),
        arg("--L", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated lengths"),
    ],
)
def bench(cfg: ExperimentConfig, ctx: Context) -> None:
    from smr_ssm.experiment import run_bench

    run_bench(_set(cfg, "bench", layers=ctx.args.layers, lengths=ctx.args.L), out=ctx.out, log=print)


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
