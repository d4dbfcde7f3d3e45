"""``sr-cis`` command line.

Sub-commands:
  train        run a paper table from a config (``configs/cifar100_10t.yaml`` ...): every method of
               ``methods`` on one runner; checkpoints per task, ``--resume``; writes ``results.json``
  eval         evaluate a saved SR-CIS state (``--state``) on the test split of a config
  quick        the digits quick reproduction (same as ``uv run reproduce sr-cis``)
  show-config  print the resolved config (YAML) of a config file + overrides
  import-table read a LAMDA-PILOT / InfLoRA results table (CSV/JSON) and print the rows
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from papers_shared.config import ConfigError, config_to_dict, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["main"]


def _load(args):
    from sr_cis.config import ExperimentConfig

    return load_config(ExperimentConfig, args.config, args.overrides)


def _cmd_train(args) -> int:
    from papers_shared.checkpoints import atomic_write_text
    from papers_shared.results import to_jsonable
    from sr_cis.experiment import run_experiment

    cfg = _load(args)
    out = Path(args.out or cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    res = run_experiment(cfg, out_dir=out, resume=args.resume)
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(res), indent=2) + "\n")
    summary = {
        k: {x: v[x] for x in ("final_acc", "avg_acc", "final_acc_fast", "forgetting_acc", "route_frac")}
        for k, v in res.items()
    }
    print(json.dumps(to_jsonable(summary), indent=2))
    print(f"results: {out / 'results.json'}")
    return 0


def _cmd_eval(args) -> int:
    from torch.utils.data import ConcatDataset

    from papers_shared.results import to_jsonable
    from sr_cis.data import load_benchmark
    from sr_cis.experiment import build_method, eval_subset
    from sr_cis.small_model import build_small_model

    cfg = _load(args)
    if not Path(args.state).is_file():
        raise FileNotFoundError(f"SR-CIS state file not found: {args.state}")
    small_cfg = cfg.system.small
    size = small_cfg.tiny.image_size if small_cfg.model_id is None else None
    bench = load_benchmark(cfg.data, image_size=size)
    large = None
    if cfg.system.slow.model_id:
        from sr_cis.slow_path import build_large_model

        large = build_large_model(cfg.system.slow.model_id)
    cfg.system.text.describe_mode = "class_name_only"  # evaluation writes no descriptions
    system = build_method("sr_cis", cfg.system, build_small_model(small_cfg), large, bench.class_names)
    system.load(args.state)
    n = system.tasks_seen
    test = eval_subset(ConcatDataset([bench.task_test(s) for s in range(n)]), cfg.max_eval_samples, cfg.seed)
    res = system.evaluate(test, {c: s.index for s in bench.split for c in s.classes})
    res.pop("storage", None)
    print(json.dumps(to_jsonable(res), indent=2))
    return 0


def _cmd_quick(args) -> int:
    from papers_shared.results import save_and_report
    from sr_cis.config import QuickConfig
    from sr_cis.quick import quick_reproduction

    cfg = load_config(QuickConfig, args.config, args.overrides) if (args.config or args.overrides) else None
    res = quick_reproduction(Path(args.out), quick=not args.full, cfg=cfg)
    save_and_report(res, args.out)
    return 0


def _cmd_show(args) -> int:
    import yaml

    cls_name = args.kind
    from sr_cis import config as C

    cls = {"experiment": C.ExperimentConfig, "quick": C.QuickConfig}[cls_name]
    cfg = load_config(cls, args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def _cmd_import(args) -> int:
    from sr_cis.baselines import import_results_table

    rows = import_results_table(args.file)
    print(json.dumps(rows, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sr-cis", description="SR-CIS: Self-Reflective Complementary Incremental System."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="run a paper table from a config")
    p.add_argument("--config", required=True)
    p.add_argument("--out", default=None, help="output folder (default: out_dir of the config)")
    p.add_argument("--resume", action="store_true", help="continue SR-CIS runs from their last checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("eval", help="evaluate a saved SR-CIS state on a config's test split")
    p.add_argument("--config", required=True)
    p.add_argument("--state", required=True, help="file written by SRCIS.save")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("quick", help="digits quick reproduction")
    p.add_argument("--out", default="results/quick")
    p.add_argument("--full", action="store_true", help="3 seeds instead of 1")
    p.add_argument("--config", default=None, help="YAML with QuickConfig fields (configs/quick.yaml)")
    p.add_argument("overrides", nargs="*", help="QuickConfig key=value overrides")
    p.set_defaults(fn=_cmd_quick)
    p = sub.add_parser("show-config", help="print the resolved config")
    p.add_argument("--config", default=None)
    p.add_argument("--kind", choices=["experiment", "quick"], default="experiment")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_show)
    p = sub.add_parser("import-table", help="read an external baselines results table (CSV/JSON)")
    p.add_argument("file")
    p.set_defaults(fn=_cmd_import)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError, KeyError, ImportError) as exc:
        print(f"sr-cis {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
