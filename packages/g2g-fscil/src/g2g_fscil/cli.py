"""g2g-fscil: graph-to-graph explicit memory (G2G, LGP, CAG2G) for few-shot class-incremental learning.

Commands: run (alias train) runs a paper table row (pre-train, meta-train, incremental sessions; per seed
results.json and model.safetensors); pretrain and metatrain run the first stages; ablate runs the config's
`variants` on one shared pre-training per seed; eval evaluates a saved model.safetensors.
Several GPUs or nodes: torchrun --nproc-per-node 8 -m g2g_fscil.cli run --config cifar100
"""

from __future__ import annotations

from pathlib import Path

from g2g_fscil.config import ExperimentConfig
from papers_shared import distributed as pd
from papers_shared.cli import CLI, Context, arg

__all__ = ["cli", "main"]

cli = CLI(
    "g2g-fscil",
    ExperimentConfig,
    description=__doc__,
    keys={"seed": "seeds", "out": "out_dir", "device": "device"},
)


def _rank0(result):
    """Only rank 0 of a multi-process run prints the result."""
    return result if pd.is_main_process() else None


@cli.command("run", help="a paper table row: pre-train, meta-train, incremental sessions, per seed")
def run(cfg: ExperimentConfig, ctx: Context):
    from g2g_fscil.experiment import run_table

    return _rank0(run_table(cfg, ctx.resume, ctx.progress))


cli.command("train", help="the same as run")(run)


@cli.command("pretrain", help="stage 1 only (base-class cross-entropy); pretrain.safetensors per seed")
def pretrain(cfg: ExperimentConfig, ctx: Context):
    from g2g_fscil.experiment import run_pretrain

    return _rank0(run_pretrain(cfg, ctx.resume, ctx.progress))


@cli.command("metatrain", help="stages 1-2 for method=g2g|v2v; metatrain.safetensors per seed")
def metatrain(cfg: ExperimentConfig, ctx: Context):
    from g2g_fscil.experiment import run_metatrain

    return _rank0(run_metatrain(cfg, ctx.resume, ctx.progress))


@cli.command("ablate", help="the config's `variants` (e.g. variants=[v2v,g2g]) on one pre-training per seed")
def ablate(cfg: ExperimentConfig, ctx: Context):
    from g2g_fscil.experiment import run_ablation

    return _rank0(run_ablation(cfg, ctx.resume, ctx.progress))


@cli.command(
    "eval",
    help="evaluate a model.safetensors written by `run` on the sessions its memory covers",
    args=[arg("--checkpoint", type=Path, required=True, help="model.safetensors of `g2g-fscil run`")],
    flags=("device", "no-progress"),
)
def evaluate(cfg: ExperimentConfig, ctx: Context):
    from g2g_fscil.experiment import evaluate_checkpoint

    return _rank0(evaluate_checkpoint(cfg, ctx.args.checkpoint))


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
