"""``t-switch`` command line.

Sub-commands:
  run       a paper table from a config (``configs/vit_b32.yaml`` ...), writes ``results.json``
  compress  T-Switch any pre-trained/fine-tuned checkpoints into one switch file (+ storage report)
  report    storage report of a switch file
  quick     the digits quick reproduction (same as ``uv run reproduce t-switch``)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from papers_shared.config import ConfigError, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["load_state", "main"]


def load_state(src: str) -> dict:
    """A state dict from ``.safetensors``, ``.pt``/``.bin`` (tensors only), a ``transformers`` folder or
    a cached hub id."""
    import torch

    from papers_shared.checkpoints import load_checkpoint, load_safetensors

    p = Path(src).expanduser()
    if p.is_file():
        if p.suffix == ".safetensors":
            return load_safetensors(p)[0]
        obj = load_checkpoint(p)
        obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{p} does not hold a flat state dict of tensors")
        return obj
    from transformers import AutoModel

    from t_switch.hub import resolve

    return AutoModel.from_pretrained(resolve(src)).state_dict()


def _cmd_run(args) -> int:
    from papers_shared.checkpoints import atomic_write_text
    from papers_shared.results import to_jsonable
    from t_switch.config import ExperimentConfig
    from t_switch.hub import run_experiment

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    res = run_experiment(cfg)
    atomic_write_text(out / "results.json", json.dumps(to_jsonable(res), indent=2) + "\n")
    print(
        json.dumps(
            to_jsonable({k: v.get("avg") for k, v in res.items() if isinstance(v, dict) and "avg" in v}),
            indent=2,
        )
    )
    print(f"results: {out / 'results.json'}")
    return 0


def _cmd_compress(args) -> int:
    from t_switch.config import SwitchConfig
    from t_switch.experiment import build_switches
    from t_switch.storage import save_switches, storage_report
    from t_switch.task_vector import task_vector

    cfg = load_config(SwitchConfig, args.config, args.overrides)
    pre = load_state(args.pretrained)
    tvs = {}
    for item in args.finetuned:
        if "=" not in item:
            raise ValueError(f"--finetuned expects task=path, got {item!r}")
        task, src = item.split("=", 1)
        tvs[task] = task_vector(pre, load_state(src), exclude=cfg.exclude)
    switches = build_switches(tvs, cfg)
    path = save_switches(
        args.out,
        switches,
        pretrained=pre if args.with_pretrained else None,
        group_size=cfg.group_size,
        layout=cfg.layout,
    )
    rep = storage_report(switches, cfg.group_size, cfg.layout, file_path=path)
    print(json.dumps(rep["total"], indent=2))
    print(f"switch file: {path}")
    return 0


def _cmd_report(args) -> int:
    from t_switch.storage import load_switches, storage_report

    f = load_switches(args.file)
    rep = storage_report(f.switches, int(f.meta["group_size"]), f.meta["layout"], file_path=args.file)
    print(json.dumps(rep if args.per_task else rep["total"], indent=2))
    return 0


def _cmd_quick(args) -> int:
    from papers_shared.results import save_and_report
    from t_switch.config import QuickConfig
    from t_switch.quick import quick_reproduction

    cfg = load_config(QuickConfig, args.config, args.overrides) if (args.config or args.overrides) else None
    res = quick_reproduction(Path(args.out), quick=not args.full, cfg=cfg)
    save_and_report(res, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="t-switch", description="Binary Task Switch (T-Switch) and Auto-Switch."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run a paper table from a config")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser("compress", help="compress fine-tuned checkpoints into a switch file")
    p.add_argument(
        "--pretrained", required=True, help=".safetensors/.pt file, transformers folder or cached hub id"
    )
    p.add_argument("--finetuned", nargs="+", required=True, metavar="TASK=PATH")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="YAML with SwitchConfig fields")
    p.add_argument("--with-pretrained", action="store_true", help="store theta_0 once in the same file")
    p.add_argument("overrides", nargs="*", help="SwitchConfig key=value overrides, e.g. drop_ratio=0.7")
    p.set_defaults(fn=_cmd_compress)
    p = sub.add_parser("report", help="storage report of a switch file")
    p.add_argument("file")
    p.add_argument("--per-task", action="store_true")
    p.set_defaults(fn=_cmd_report)
    p = sub.add_parser("quick", help="digits quick reproduction")
    p.add_argument("--out", default="results/quick")
    p.add_argument("--full", action="store_true", help="5 seeds instead of 3")
    p.add_argument("--config", default=None, help="YAML with QuickConfig fields (configs/quick.yaml)")
    p.add_argument("overrides", nargs="*", help="QuickConfig key=value overrides")
    p.set_defaults(fn=_cmd_quick)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"t-switch {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
