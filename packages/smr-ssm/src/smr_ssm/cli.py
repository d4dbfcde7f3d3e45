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
from papers_shared.config import config_to_dict
from papers_shared.results import Claim, format_claims, write_json
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


@cli.command("lm", help="train and evaluate a language model on WikiText-103 (perplexity table)")
def lm(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from smr_ssm.experiment import run_lm

    cfg.require("lm")
    return _table(run_lm(cfg, resume=ctx.resume, progress=ctx.progress))


@cli.command(
    "lra",
    help="train and evaluate one Long Range Arena task (accuracy table)",
    args=[arg("--task", choices=TASKS, help="sets lra.task"), arg("--data-dir", help="sets lra.data_dir")],
)
def lra(cfg: ExperimentConfig, ctx: Context) -> dict | None:
    from smr_ssm.experiment import run_lra

    cfg.require("lra")
    given = {"task": ctx.args.task, "data_dir": ctx.args.data_dir}
    cfg = dataclasses.replace(cfg, lra=dataclasses.replace(cfg.lra, **{k: v for k, v in given.items() if v}))
    return _table(run_lra(cfg, resume=ctx.resume, progress=ctx.progress))


@cli.command("nss", help="sampling-shift experiment (--seed N runs that one seed); writes <out>/nss.json")
def nss(cfg: ExperimentConfig, ctx: Context) -> int:
    from smr_ssm.experiment import run_nss
    from smr_ssm.quick import build_claims, build_variant_claims

    cfg.require("nss")
    if ctx.seed is not None:
        cfg = dataclasses.replace(cfg, nss=dataclasses.replace(cfg.nss, seeds=[ctx.seed]))
    res = run_nss(cfg, progress=ctx.progress)
    models, host = set(cfg.nss.models), cfg.model.layer_type
    pair = next((p for p in (("baseline", "smr"), ("baseline_steps", "smr_steps")) if set(p) <= models), None)
    claims: list[Claim] = []
    if cfg.nss.task == "uniform_grid" and pair:
        claims = build_variant_claims(res, host, pair)
    elif {"baseline", "smr"} <= models:
        claims = build_claims(res, host, cfg.nss.steps_host)
    record = {**res, "claims": [dataclasses.asdict(c) for c in claims], "config": config_to_dict(cfg)}
    path = write_json(record, Path(ctx.out) / "nss.json")
    print(format_claims({"claims": [dataclasses.asdict(c) for c in claims]}))
    print(f"wrote {path}")
    return 0


@cli.command(
    "bench",
    help="forward + backward time of layers with and without SMR; writes <out>/bench.json",
    args=[
        arg(
            "--layers",
            type=lambda s: s.split(","),
            help="comma-separated specs, e.g. s4d,s4d+smr (sets bench.layers)",
        ),
        arg(
            "--L",
            type=lambda s: [int(x) for x in s.split(",")],
            help="comma-separated lengths (sets bench.lengths)",
        ),
    ],
)
def bench(cfg: ExperimentConfig, ctx: Context) -> int:
    from smr_ssm.experiment import run_bench

    given = {"layers": ctx.args.layers, "lengths": ctx.args.L}
    cfg = dataclasses.replace(
        cfg, bench=dataclasses.replace(cfg.bench, **{k: v for k, v in given.items() if v})
    )
    for r in run_bench(cfg, out=ctx.out)["rows"]:
        ratio = f"{r['ratio_to_baseline']:.3f}x" if r["ratio_to_baseline"] else "-"
        print(
            f"{r['layer']:>16}  L={r['L']:>6}  {r['ms']:9.2f} ms  {ratio:>8}  {r['tokens_per_s']:.0f} tok/s"
        )
    return 0


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
