"""``icl-vmf``: Interactive Continual Learning (fast ViT + CL-vMF memory, slow multimodal LLM).

  train      every method x seed of a config on its stream; writes results.json and weights/*.safetensors
  eval       re-evaluate trained weights or a checkpoint (e.g. with a System2 that was off in training)
  zero-shot  System2 alone over all class names

Overrides follow the options: ``icl-vmf train --config seq_cifar10 train.buffer_size=200 loss.kappa=0.5``.
Multi-GPU: ``torchrun --nproc-per-node 2 -m icl_vmf.cli train --config seq_cifar10``.
"""

from __future__ import annotations

from pathlib import Path

from icl_vmf.config import ExperimentConfig
from papers_shared.cli import CLI, Context, arg, check_output_dir

cli = CLI("icl-vmf", ExperimentConfig, description=__doc__, keys={"seed": "seeds", "device": "device"})


@cli.command("train", help="train and evaluate the configured methods (one run per method and seed)")
def train(cfg: ExperimentConfig, ctx: Context) -> None:
    from icl_vmf.experiment import format_summary, run_experiment
    from papers_shared import distributed as dist

    out = check_output_dir(ctx.out or Path(cfg.out_dir) / cfg.name)
    try:
        report = run_experiment(cfg, out, resume=ctx.resume, progress=ctx.progress)
    finally:
        dist.cleanup()
    if dist.is_main_process():
        print(format_summary(report["summary"]))
        print(f"results: {out / 'results.json'}, weights: {out / 'weights'}")


@cli.command(
    "eval",
    help="re-evaluate trained weights (weights/*.safetensors), a checkpoint file or a checkpoint folder",
    flags=("seed", "device", "no-progress"),
    args=[
        arg("--checkpoint", type=Path, required=True, help="e.g. <out>/weights/icl-seed42.safetensors"),
        arg(
            "--method", default=None, help="learner of a training checkpoint (default: from the file, or icl)"
        ),
    ],
)
def evaluate(cfg: ExperimentConfig, ctx: Context) -> dict:
    from icl_vmf.experiment import evaluate_checkpoint
    from papers_shared import distributed as dist

    report = evaluate_checkpoint(cfg, ctx.args.checkpoint, ctx.args.method)
    return report if dist.is_main_process() else None


@cli.command(
    "zero-shot",
    help="System2 alone over all class names (unparseable answers count as wrong)",
    flags=("device", "no-progress"),
    args=[arg("--max-per-task", type=int, default=0, help="cap test images per task (0 = all)")],
)
def zero_shot(cfg: ExperimentConfig, ctx: Context) -> dict:
    from icl_vmf.experiment import zero_shot as run_zero_shot
    from papers_shared.config import ConfigError

    if ctx.args.max_per_task < 0:
        raise ConfigError(f"--max-per-task {ctx.args.max_per_task}: give 0 (all) or a positive cap")
    return run_zero_shot(cfg, ctx.args.max_per_task)


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
