"""``fsg-bnn``: Fast and Slow Gradient generation for binary neural networks (HGS, FSG, LRE).

  pretrain  full-precision pretraining (the starting point of every binarized run)
  train     FP pretraining if needed, then binarized training with optim.method
  eval      test accuracy of trained weights (model.safetensors or ckpt/ckpt-*.pt)

Example: ``fsg-bnn train --config cifar10_resnet20 optim.method=multifc --seed 1 --resume``.
Several GPUs or nodes (the same commands): ``torchrun --nproc-per-node 8 -m fsg_bnn.cli train --config
cifar10_resnet20`` or ``accelerate launch -m fsg_bnn.cli train --config cifar10_resnet20``.
"""

from __future__ import annotations

from pathlib import Path

from fsg_bnn.config import ExperimentConfig
from papers_shared import distributed as pd
from papers_shared.cli import CLI, Context, arg

#: the common flags --seed, --device and --out set these config keys
FLAG_KEYS = {"seed": "train.seed", "device": "train.device", "out": "train.out_dir"}
cli = CLI("fsg-bnn", ExperimentConfig, description=__doc__, keys=FLAG_KEYS)


def _printed(summary: dict) -> dict | None:
    """The summary rank 0 prints (the other processes of a torchrun run print nothing); the process
    group, if any, is left."""
    shown = summary if pd.is_main_process() else None
    pd.cleanup()
    return shown


@cli.command("pretrain", help="full-precision pretraining only; writes <out>/fp/model.safetensors")
def pretrain(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from fsg_bnn.experiment import run_pretrain

    return _printed({"fp_weights": str(run_pretrain(cfg, resume=ctx.resume, progress=ctx.progress))})


@cli.command("train", help="FP pretraining (if needed) then binarized training; writes result.json")
def train(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from fsg_bnn.experiment import run_experiment

    res = run_experiment(cfg, resume=ctx.resume, progress=ctx.progress)
    keys = ("best_test_acc", "last10_mean_test_acc", "final_train_loss")
    return _printed({"method": cfg.optim.method, **{k: res[k] for k in keys}})


@cli.command(
    "eval",
    help="evaluate trained weights on the test set",
    flags=("seed", "device", "no-progress"),
    args=[
        arg("--checkpoint", type=Path, required=True, help="<out>/model.safetensors or <out>/ckpt/ckpt-*.pt")
    ],
)
def evaluate(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from fsg_bnn.experiment import evaluate_checkpoint

    return _printed(evaluate_checkpoint(cfg, ctx.args.checkpoint))


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
