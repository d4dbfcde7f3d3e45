"""``ibta`` command line.

Sub-commands:
  attack       run a transfer table from a config (``configs/exp1_cnn.yaml`` ...), writes results.csv
               (alias: ``run``); ``--resume`` is on by default (cells already in the CSV are skipped)
  ablate       one-at-a-time lambda / gamma / sigma sweep (one results.csv per value)
  eval         summarise a results CSV: X vs IBTA-X success per source -> victim (mean over targets)
  mine         MINE estimate of I(delta; X) for one attack on the configured data
  quick        the digits quick reproduction (same as ``uv run reproduce ibta``)
  show-config  print a config (with overrides applied) as YAML
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from papers_shared.config import ConfigError, config_to_dict, load_config
from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["main", "summarize"]


def _exp_config(args):
    from ibta.config import ExperimentConfig

    return load_config(ExperimentConfig, args.config, args.overrides)


def _cmd_attack(args) -> int:
    from ibta.experiment import run_experiment

    cfg = _exp_config(args)
    rows = run_experiment(cfg, log=print if args.verbose else None, progress=not args.no_progress)
    path = Path(cfg.out_dir) / cfg.name / "results.csv"
    print(summarize(rows))
    print(f"results: {path}")
    return 0


def _cmd_ablate(args) -> int:
    from ibta.experiment import run_ablation

    cfg = _exp_config(args)
    rows = run_ablation(cfg, log=print if args.verbose else None, progress=not args.no_progress)
    for param in ("lam", "gamma", "sigma"):
        for r in rows:
            if (
                r["param"] == param
                and str(r.get("target")) in ("None", "", "mean")
                and not _is_true(r["white_box"])
            ):
                print(
                    f"{param}={r['value']:g} {r['mode']} {r['source']}->{r['victim']} {r['attack']}: {float(r['success']):.3f}"
                )
    return 0


def _is_true(v) -> bool:
    return v is True or str(v) == "True"


def summarize(rows: list[dict]) -> str:
    """Markdown table: one line per (mode, source, attack), one column per victim (success, %)."""
    table: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    victims: list[str] = []
    for r in rows:
        if str(r.get("target")) not in ("None", "", "mean"):
            continue
        key = (str(r["mode"]), str(r["source"]), str(r["attack"]))
        table[key][str(r["victim"])] = 100.0 * float(r["success"])
        if r["victim"] not in victims:
            victims.append(str(r["victim"]))
    lines = ["| mode | source | attack | " + " | ".join(victims) + " |", "|---" * (3 + len(victims)) + "|"]
    for (mode, src, att), vals in table.items():
        cells = [f"{vals[v]:.1f}" if v in vals else "-" for v in victims]
        lines.append(f"| {mode} | {src} | {att} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    from ibta.experiment import read_rows

    path = Path(args.csv)
    if not path.is_file():
        raise FileNotFoundError(f"results CSV not found: {path} (produce it with `ibta attack --config ...`)")
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no result rows")
    print(summarize(rows))
    return 0


def _cmd_mine(args) -> int:
    from ibta.analysis import perturbation_input_mi
    from ibta.experiment import build_attack, build_data, build_model
    from papers_shared.device import get_device

    cfg = _exp_config(args)
    device = get_device(cfg.device)
    cache: dict = {}
    source = build_model(args.source or cfg.sources[0], cfg, device, cache)
    loader, _, _ = build_data(cfg, targeted=False)
    attack = build_attack(args.attack, source, cfg.attack, targeted=False)
    m = cfg.mine
    est = perturbation_input_mi(
        attack,
        source,
        loader,
        pool=m.pool,
        variables=m.variables,
        steps=m.steps,
        batch_size=m.batch_size,
        lr=m.lr,
        hidden=m.hidden,
        depth=m.depth,
        ema_rate=m.ema_rate,
        eval_every=m.eval_every,
        average_last=m.average_last,
        holdout_frac=m.holdout_frac,
        seed=m.seed,
    )
    print(json.dumps({"attack": args.attack, "variables": m.variables, "mi_nats": est.value}))
    return 0


def _cmd_quick(args) -> int:
    from ibta.config import QuickConfig
    from ibta.quick import quick_reproduction
    from papers_shared.results import save_and_report

    cfg = load_config(QuickConfig, args.config, args.overrides) if (args.config or args.overrides) else None
    res = quick_reproduction(Path(args.out), quick=not args.full, cfg=cfg)
    save_and_report(res, args.out)
    return 0


def _cmd_show(args) -> int:
    from ibta.config import ExperimentConfig, QuickConfig

    cls = QuickConfig if args.kind == "quick" else ExperimentConfig
    cfg = load_config(cls, args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ibta", description="IBTA transfer attacks and MINE analysis.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("attack", "run"):
        p = sub.add_parser(name, help="run a transfer table from a config")
        p.add_argument("--config", required=True)
        p.add_argument("--verbose", action="store_true", help="print every cell's success rate")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys, e.g. attack.lam=1)")
        p.set_defaults(fn=_cmd_attack)
    p = sub.add_parser("ablate", help="lambda / gamma / sigma sweep (spec §7)")
    p.add_argument("--config", required=True)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_ablate)
    p = sub.add_parser("eval", help="summarise a results CSV")
    p.add_argument("--csv", required=True)
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("mine", help="MINE estimate of I(delta; X) for one attack")
    p.add_argument("--config", required=True)
    p.add_argument("--attack", required=True)
    p.add_argument("--source", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_mine)
    p = sub.add_parser("quick", help="digits quick reproduction")
    p.add_argument("--out", default="runs/ibta_quick")
    p.add_argument("--full", action="store_true", help="5 seeds, all 540 test images")
    p.add_argument("--config", default=None, help="YAML with QuickConfig fields (configs/quick.yaml)")
    p.add_argument("overrides", nargs="*", help="QuickConfig key=value overrides")
    p.set_defaults(fn=_cmd_quick)
    p = sub.add_parser("show-config", help="print a config with overrides applied")
    p.add_argument("--config", default=None)
    p.add_argument("--kind", choices=["experiment", "quick"], default="experiment")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_show)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"ibta {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
