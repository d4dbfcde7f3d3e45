"""mecoin: Mecoin (NeurIPS 2024) and its baselines for graph few-shot class-incremental learning.

mecoin list-configs                          the shipped configs (one per paper table)
mecoin run --config corafull                 a paper table: every method and seed -> <out_dir>/<name>/
mecoin run --config cs methods=[mecoin,finetune_last] mecoin.distill=none seeds=[1,2,3]
mecoin ablate --config ablation_cs --variants full,no_inter,no_graphinfo,no_meco
mecoin pretrain --config corafull            pre-train (and cache) the encoder of every seed
mecoin eval --weights runs/mecoin/quick/mecoin-seed0.safetensors
mecoin quick                                 the offline quick reproduction (= reproduce mecoin)
"""

from __future__ import annotations

import warnings
from pathlib import Path

from mecoin.config import ABLATIONS, ExperimentConfig
from papers_shared.cli import CLI, Context, arg

__all__ = ["cli", "main"]

# Importing torch_geometric calls the deprecated torch.jit.script: noise on a command line, not for the user.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

cli = CLI(
    "mecoin",
    ExperimentConfig,
    description=__doc__,
    keys={"seed": "seeds", "device": "device", "out": "out_dir"},
)


@cli.command("run", help="run a paper table: every method and seed of the config")
def run(cfg: ExperimentConfig, ctx: Context) -> dict:
    from mecoin.experiment import run_experiment

    cfg.progress = cfg.progress and ctx.progress
    result = run_experiment(cfg, resume=ctx.resume)
    return {
        "results": str(Path(cfg.out_dir) / cfg.name / "results.json"),
        "summary": _brief(result["summary"]),
    }


@cli.command(
    "ablate",
    help="Mecoin ablation variants (the paper's ablation figure and distillation study)",
    args=[arg("--variants", default="full,no_inter,no_graphinfo,no_meco", help=f"of {', '.join(ABLATIONS)}")],
)
def ablate(cfg: ExperimentConfig, ctx: Context) -> dict:
    from mecoin.experiment import run_ablation

    cfg.progress = cfg.progress and ctx.progress
    variants = [v.strip() for v in ctx.args.variants.split(",") if v.strip()]
    return _brief(run_ablation(cfg, variants, resume=ctx.resume))


@cli.command("pretrain", help="pre-train the encoder of every seed on the base session (cached for run)")
def pretrain(cfg: ExperimentConfig, ctx: Context) -> dict:
    from mecoin.data import build_task
    from mecoin.trainer import cache_path, pretrain_task, resolve_device

    cfg.progress = cfg.progress and ctx.progress
    device, cache = resolve_device(cfg.device), Path(cfg.out_dir) / cfg.name / "pretrain"
    out = {}
    for seed in cfg.seeds:
        res = pretrain_task(build_task(cfg, seed).to(device), cfg, seed, device, cache_dir=cache)
        out[f"seed {seed}"] = {"base_val_acc": res.best_val_acc, "cache": str(cache_path(cache, cfg, seed))}
    return out


@cli.command(
    "eval",
    help="accuracy of a saved Mecoin memory (.safetensors written by run) on its own task",
    args=[arg("--weights", type=Path, required=True, help="mecoin-seed<S>.safetensors written by run")],
    flags=("device", "no-progress"),
)
def evaluate(cfg: ExperimentConfig, ctx: Context) -> dict:
    from mecoin.experiment import evaluate_memory

    return evaluate_memory(ctx.args.weights, cfg)


def _brief(summary: dict) -> dict:
    keys = ("avg", "pd", "last", "forgetting")
    return {m: {k: round(s[k], 2) for k in keys} for m, s in summary.items()}


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
