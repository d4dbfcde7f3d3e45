"""``icl-vmf`` command line.

Sub-commands (``key=value`` overrides follow the options, e.g. ``train.buffer_size=200``):
  train        run ``methods`` x ``seeds`` of a config on its stream; writes ``results.json``
  eval         re-evaluate a trained ICL checkpoint (e.g. with a System2 that was off during training)
  zero-shot    System2 alone over all class names (spec §4.4)
  show-config  print the resolved config
  quick        the digits quick reproduction (same as ``uv run reproduce icl-vmf``)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from papers_shared.config import ConfigError, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["main"]


def _load(args):
    from icl_vmf.config import ExperimentConfig

    return load_config(ExperimentConfig, args.config, args.overrides)


def _out_dir(cfg, args) -> Path:
    return Path(args.out) if args.out else Path(cfg.out_dir) / cfg.name


def _print_summary(report: dict) -> None:
    print(f"{'method':<18}{'class-IL':>10}{'task-IL':>10}{'+System2':>10}{'forget':>9}")
    for m, r in report["summary"].items():
        s2 = r.get("final_class_il_with_system2")
        s2 = f"{100 * s2:10.2f}" if s2 is not None else f"{'-':>10}"
        print(
            f"{m:<18}{100 * r['final_class_il']:10.2f}{100 * r['final_task_il']:10.2f}{s2}{100 * r['forgetting']:9.2f}"
        )


def _cmd_train(args) -> int:
    from icl_vmf.experiment import run_experiment

    cfg = _load(args)
    out = _out_dir(cfg, args)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    report = run_experiment(cfg, out, resume=args.resume)
    _print_summary(report)
    print(f"results: {out / 'results.json'}")
    return 0


def _cmd_eval(args) -> int:
    import torch

    from icl_vmf.baselines import build_learner
    from icl_vmf.data import build_stream
    from icl_vmf.experiment import num_threads, prepare_encoder
    from icl_vmf.system2 import build_system2
    from icl_vmf.trainer import evaluate
    from papers_shared.checkpoints import CheckpointManager
    from papers_shared.device import get_device
    from papers_shared.results import to_jsonable

    cfg = _load(args)
    device = get_device(cfg.device)
    seed = cfg.seeds[0]
    with num_threads(cfg.train.num_threads):
        data = build_stream(cfg.data)
        state = CheckpointManager(args.checkpoint).load_latest(map_location=device)
        if state is None:
            raise FileNotFoundError(f"no checkpoint (ckpt-*.pt) in {args.checkpoint}")
        learner = build_learner(
            args.method, cfg, data, prepare_encoder(cfg, data, seed, device), device, seed
        )
        learner.load_full_state(state["learner"])
        system2 = build_system2(cfg.system2, device, data.class_names) if cfg.system2.enabled else None
        upto = int(state["step"])
        with torch.no_grad():
            cil, til, stats, final = evaluate(learner, data, upto, cfg, system2)
    out = {
        "after_task": upto,
        "class_il": cil,
        "task_il": til,
        "class_il_with_system2": final,
        "interaction": stats.as_dict(),
    }
    print(json.dumps(to_jsonable(out), indent=2))
    return 0


def _cmd_zero_shot(args) -> int:
    from icl_vmf.baselines import system2_zero_shot
    from icl_vmf.data import build_stream
    from icl_vmf.system2 import build_system2
    from papers_shared.device import get_device

    cfg = _load(args)
    data = build_stream(cfg.data)
    system2 = build_system2(cfg.system2, get_device(cfg.device), data.class_names)
    print(json.dumps(system2_zero_shot(system2, data, cfg.system2.batch_size, args.max_per_task), indent=2))
    return 0


def _cmd_show(args) -> int:
    import yaml

    from papers_shared.config import config_to_dict

    print(yaml.safe_dump(config_to_dict(_load(args)), sort_keys=False), end="")
    return 0


def _cmd_quick(args) -> int:
    from icl_vmf.quick import quick_reproduction
    from papers_shared.results import write_result

    res = quick_reproduction(Path(args.out), quick=not args.full)
    path = write_result(res, args.out)
    for c in res.claims:
        print(f"[{'holds' if c.holds else 'FAILS'}] {c.claim}")
    print(f"results: {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icl-vmf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", type=Path, help="YAML config (configs/*.yaml)")
        s.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys)")
        return s

    s = with_config("train", "train and evaluate the configured methods")
    s.add_argument("--out", type=Path, help="output folder (default: <out_dir>/<name>)")
    s.add_argument("--resume", action="store_true", help="continue every run from its last task checkpoint")
    s.set_defaults(fn=_cmd_train)
    s = with_config("eval", "re-evaluate a checkpoint folder written by `train`")
    s.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="runs' checkpoint folder, e.g. <out>/checkpoints/icl-seed42",
    )
    s.add_argument("--method", default="icl", help="method of the checkpoint (default icl)")
    s.set_defaults(fn=_cmd_eval)
    s = with_config("zero-shot", "System2 alone over all class names")
    s.add_argument("--max-per-task", type=int, default=0, help="cap test images per task (0 = all)")
    s.set_defaults(fn=_cmd_zero_shot)
    s = with_config("show-config", "print the resolved config")
    s.set_defaults(fn=_cmd_show)
    s = sub.add_parser("quick", help="digits quick reproduction")
    s.add_argument("--out", type=Path, default=Path("results/quick"))
    s.add_argument("--full", action="store_true", help="5 seeds instead of 3")
    s.set_defaults(fn=_cmd_quick)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError) as exc:
        print(f"icl-vmf: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
