"""t-switch: Binary Task Switch (T-Switch) and Auto-Switch for model merging (Qi et al., CVPR 2025).

run       a table from a config (`list-configs`), writes <out>/<name>/results.json; runs under torchrun
compress  T-Switch fine-tuned checkpoints (files or cached hub ids) into <out>/switches.safetensors
report    storage report of a switch file
"""

from __future__ import annotations

from pathlib import Path

from papers_shared.cli import CLI, Context, arg
from papers_shared.errors import InputError
from t_switch.config import ExperimentConfig

cli = CLI(
    "t-switch",
    ExperimentConfig,
    description=__doc__,
    keys={"seed": "seed", "device": "device", "out": "out_dir"},
)


@cli.command("run", help="run a table (paper table or digits) from a config; writes results.json")
def run(cfg: ExperimentConfig, ctx: Context) -> int:
    from papers_shared.distributed import is_main_process
    from t_switch.experiment import run_experiment, write_results

    path = write_results(cfg, run_experiment(cfg, progress=ctx.progress), ctx.out)
    if is_main_process():
        print(f"results: {path}")
    return 0


@cli.command(
    "compress",
    help="T-Switch fine-tuned checkpoints into one switch file (switch.* keys configure it)",
    args=[
        arg(
            "--pretrained",
            required=True,
            help="theta_0: .safetensors/.pt file, transformers folder or hub id",
        ),
        arg(
            "--finetuned", nargs="+", required=True, metavar="TASK=SRC", help="one fine-tuned source per task"
        ),
        arg("--with-pretrained", action="store_true", help="also store theta_0 once in the switch file"),
    ],
    flags=("out", "no-progress"),
)
def compress(cfg: ExperimentConfig, ctx: Context) -> dict:
    from papers_shared.results import write_json
    from t_switch.storage import compress_files

    bad = [item for item in ctx.args.finetuned if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise InputError(f"--finetuned expects TASK=SRC items, got {bad}")
    finetuned = dict(item.split("=", 1) for item in ctx.args.finetuned)
    path, report = compress_files(
        ctx.args.pretrained, finetuned, cfg.switch, ctx.out / "switches.safetensors", ctx.args.with_pretrained
    )
    write_json(report, ctx.out / "storage.json")
    return {"switch_file": str(path), **report["total"]}


@cli.command(
    "report",
    help="storage report of a switch file (bits per entry, % of fp32/fp16, MB)",
    args=[arg("file", type=Path, help="a .safetensors switch file"), arg("--per-task", action="store_true")],
    config=False,
    flags=(),
)
def report(ctx: Context) -> dict:
    from t_switch.storage import load_switches, storage_report

    f = load_switches(ctx.args.file)
    rep = storage_report(f.switches, int(f.meta["group_size"]), f.meta["layout"], file_path=ctx.args.file)
    return rep if ctx.args.per_task else rep["total"]


main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
