"""esma: Easy Sample Matching Attack (Gao et al., NeurIPS 2023), a generative targeted transfer attack.

Paper pipeline: screen -> pretrain (stage 1) -> train (stage 2) -> eval; ttp-train is the TTP baseline,
es-iterative the "+ES" study. Every command also runs under `torchrun --nproc-per-node N -m esma.cli`.
"""

from __future__ import annotations

from pathlib import Path

from papers_shared import distributed as dist
from papers_shared.cli import CLI, Context, arg

from . import experiment as ex
from .config import EsmaExperimentConfig

KEYS = {"seed": "seed", "device": "device", "out": "out_dir"}
cli = CLI("esma", EsmaExperimentConfig, description=__doc__, keys=KEYS)
BANK = arg("--bank", type=Path, help="easy-sample bank file (default: screen first)")
CSV = arg("--csv", type=Path, help="per-target rows (default: in <out>/<name>/)")


def _done(result: dict) -> dict | None:
    """Leave the process group (if any); only rank 0 prints the summary."""
    main_process = dist.is_main_process()
    dist.cleanup()
    return result if main_process else None


@cli.command("screen", help="easy-sample bank of the source model -> <out>/<name>/bank.safetensors")
def screen(cfg: EsmaExperimentConfig, ctx: Context) -> dict | None:
    return _done(ex.screen(cfg, ctx.progress))


@cli.command("pretrain", help="stage 1: target-embedding pretraining -> stage1.safetensors", args=[BANK])
def pretrain(cfg: EsmaExperimentConfig, ctx: Context) -> dict | None:
    return _done(ex.pretrain(cfg, ctx.args.bank, ctx.progress))


TRAIN_ARGS = [
    BANK,
    arg("--init", type=Path, help="stage-1 generator (default: run stage 1)"),
    arg("--no-pretrain", action="store_true", help="skip stage 1 (untrained conditioning)"),
]


@cli.command("train", help="stage 2 (screens, runs stage 1 first without --bank/--init)", args=TRAIN_ARGS)
def train(cfg: EsmaExperimentConfig, ctx: Context) -> dict | None:
    a = ctx.args
    return _done(ex.train(cfg, a.bank, a.init, not a.no_pretrain, ctx.resume, ctx.progress))


EVAL_ARGS = [
    arg("--checkpoint", "--ckpt", type=Path, help="ESMA generator file"),
    arg("--ttp", action="append", metavar="TARGET=FILE", help="TTP generator of one target (one per target)"),
    CSV,
    arg("--precision", choices=["fp32", "bf16"], help="generator inference precision (sets eval.precision)"),
    arg("--compile", action="store_true", help="torch.compile the generator (sets eval.compile)"),
]


@cli.command("eval", help="10-target sub-source transfer table -> transfer.csv", args=EVAL_ARGS)
def evaluate(cfg: EsmaExperimentConfig, ctx: Context) -> dict | None:
    a = ctx.args
    return _done(
        ex.evaluate(cfg, a.checkpoint, ex.parse_ttp(a.ttp), a.csv, ctx.progress, a.precision, a.compile)
    )


TARGET = arg("--target", type=int, required=True, help="target class id (one of class_ids)")


@cli.command("ttp-train", help="TTP baseline generator for one target", args=[TARGET])
def ttp_train(cfg: EsmaExperimentConfig, ctx: Context) -> dict | None:
    return _done(ex.ttp_train(cfg, ctx.args.target, ctx.resume, ctx.progress))


@cli.command(
    "es-iterative", help="iterative attacks matching easy/random/hard anchors vs own loss", args=[CSV]
)
def es_iterative(cfg: EsmaExperimentConfig, ctx: Context) -> dict | None:
    return _done(ex.es_iterative(cfg, ctx.args.csv, ctx.progress))


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
