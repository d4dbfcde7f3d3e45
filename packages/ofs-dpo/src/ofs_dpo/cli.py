"""``ofs-dpo``: Online Fast-Slow chasing DPO and cross-domain COFS-DPO (arXiv 2406.05534) on trl.

  run   train and evaluate every (seed, method) of a config (in-domain or cross-domain); writes results.json
  eval  score a saved adapter folder (adapter_config.json + adapter_model.safetensors) on the config's domains

Overrides follow the options: ``ofs-dpo run --config in_domain_tldr train.beta=0.2 seeds=[0,1]``.
Multi-GPU: ``accelerate launch -m ofs_dpo.cli run --config in_domain_tldr`` (or ``torchrun``).
"""

from __future__ import annotations

from pathlib import Path

from ofs_dpo.config import ExperimentConfig
from papers_shared.cli import CLI, Context, arg

cli = CLI("ofs-dpo", ExperimentConfig, description=__doc__, keys={"seed": "seeds", "out": "output_dir"})


@cli.command(
    "run", help="train + evaluate every (seed, method) of a config; writes <out>/<name>/results.json"
)
def run(cfg: ExperimentConfig, ctx: Context) -> dict:
    from ofs_dpo.experiment import run_experiment

    results = run_experiment(cfg, resume=ctx.resume, progress=ctx.progress)
    print(f"results: {Path(cfg.output_dir) / cfg.name / 'results.json'}")
    return results["aggregate"]


@cli.command(
    "eval",
    help="score a saved adapter folder (e.g. from OFSDPOTrainer.export_leader) on the config's domains",
    flags=("out", "seed", "no-progress"),
    args=[arg("--adapter", type=Path, required=True, help="folder with adapter_config.json + weights")],
)
def evaluate(cfg: ExperimentConfig, ctx: Context) -> dict:
    from ofs_dpo.experiment import evaluate_adapter

    return evaluate_adapter(cfg, ctx.args.adapter)


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
