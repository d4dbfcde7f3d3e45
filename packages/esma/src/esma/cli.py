"""``esma`` command line (spec §7).

Sub-commands (config overrides ``key=value`` go after the options):
  show-config  print the resolved config
  screen       easy-sample bank of the source model                  (spec §3.2)
  pretrain     stage 1: target-embedding pretraining                 (spec §3.4)
  train        stage 2 (runs screen / pretrain first when --bank / --init are not given)  (spec §3.5)
  eval         10-target sub-source transfer success, CSV per target (spec §5)
  ttp-train    TTP baseline generator for one target                 (spec §4)
  es-iterative iterative attacks with easy / random / hard anchor matching (spec §3.7)
  quick        the digits quick reproduction (same as ``uv run reproduce esma``)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from papers_shared.config import ConfigError, config_to_dict, load_config

__all__ = ["main", "resolve_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def resolve_config(name: str | None) -> Path | None:
    """A config path, or a bare name looked up in the package's ``configs/`` folder."""
    if name is None:
        return None
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(
        f"config {name!r} not found (neither a file nor one of {sorted(q.stem for q in CONFIG_DIR.glob('*.yaml'))})"
    )


def _cfg(args):
    from esma.config import EsmaExperimentConfig

    return load_config(EsmaExperimentConfig, resolve_config(args.config), args.overrides)


def _run_dir(cfg) -> Path:
    return Path(cfg.out_dir) / cfg.name


def _cmd_show(args) -> int:
    import yaml

    print(yaml.safe_dump(config_to_dict(_cfg(args)), sort_keys=False))
    return 0


def _cmd_screen(args) -> int:
    from esma.experiment import run_screen

    cfg = _cfg(args)
    out = Path(args.out) if args.out else _run_dir(cfg) / "bank.pt"
    bank = run_screen(cfg, out)
    sizes = {str(c): len(bank.indices[k]) for k, c in enumerate(bank.class_ids)}
    print(
        json.dumps({"bank": str(out), "kind": bank.kind, "q": bank.q, "selected_per_class": sizes}, indent=2)
    )
    return 0


def _load_or_screen(cfg, bank_path: str | None):
    from esma.experiment import run_screen
    from esma.screening import EasySampleBank

    if bank_path:
        return EasySampleBank.load(bank_path)
    return run_screen(cfg, _run_dir(cfg) / "bank.pt")


def _cmd_pretrain(args) -> int:
    from esma.experiment import run_pretrain

    cfg = _cfg(args)
    bank = _load_or_screen(cfg, args.bank)
    out = Path(args.out) if args.out else _run_dir(cfg) / "stage1.pt"
    run_pretrain(cfg, bank, out)
    print(f"stage-1 generator: {out}")
    return 0


def _cmd_train(args) -> int:
    from esma.experiment import run_pretrain, run_train

    cfg = _cfg(args)
    bank = _load_or_screen(cfg, args.bank)
    init = args.init
    if init is None and not args.no_pretrain:
        init = _run_dir(cfg) / "stage1.pt"
        if not (args.resume and Path(init).is_file()):
            run_pretrain(cfg, bank, init)
    out_dir = Path(args.out_dir) if args.out_dir else _run_dir(cfg) / "stage2"
    path = run_train(cfg, bank, init, out_dir, resume=args.resume)
    print(f"generator: {path}")
    return 0


def _cmd_eval(args) -> int:
    from esma.experiment import run_eval

    cfg = _cfg(args)
    ttp = {}
    for item in args.ttp or []:
        if "=" not in item:
            raise ValueError(f"--ttp expects target=path, got {item!r}")
        t, p = item.split("=", 1)
        ttp[int(t)] = p
    csv_path = Path(args.csv) if args.csv else _run_dir(cfg) / "transfer.csv"
    rows = run_eval(cfg, args.ckpt, csv_path, ttp or None)
    table = [{k: r[k] for k in ("attack", "source", "victim", "success", "n")} for r in rows]
    print(json.dumps(table, indent=2))
    print(f"per-target rows: {csv_path}")
    return 0


def _cmd_ttp(args) -> int:
    from esma.experiment import run_ttp_train

    cfg = _cfg(args)
    out_dir = Path(args.out_dir) if args.out_dir else _run_dir(cfg) / f"ttp_{args.target}"
    path = run_ttp_train(cfg, args.target, out_dir, resume=args.resume)
    print(f"TTP generator: {path}")
    return 0


def _cmd_es(args) -> int:
    from esma.experiment import run_es_iterative

    cfg = _cfg(args)
    csv_path = Path(args.csv) if args.csv else _run_dir(cfg) / f"es_{cfg.es.attack}.csv"
    rows = run_es_iterative(cfg, csv_path)
    summary: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        summary.setdefault(r["loss_kind"], {}).setdefault(r["victim"], []).append(r["success"])
    table = {k: {v: sum(s) / len(s) for v, s in d.items()} for k, d in summary.items()}
    print(json.dumps(table, indent=2))
    print(f"per-target rows: {csv_path}")
    return 0


def _cmd_quick(args) -> int:
    from esma.quick import quick_reproduction
    from papers_shared.results import write_result

    out = Path(args.out)
    res = quick_reproduction(out, quick=not args.full)
    path = write_result(res, out)
    for c in res.claims:
        print(f"[{'ok' if c.holds else 'FAILS'}] {c.claim}: {c.method_value:.3f} {c.op} {c.baseline_value:.3f}"
              f"{'' if not c.margin else f' + {c.margin}'}")  # fmt: skip
    print(f"results: {path} ({res.runtime_s} s)")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esma", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument(
            "--config", default=None, help="YAML file or a name from configs/ (e.g. esma_resnet50)"
        )
        sp.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. train.epochs=10)")
        sp.set_defaults(fn=fn)
        return sp

    add("show-config", _cmd_show, "print the resolved config")
    sp = add("screen", _cmd_screen, "easy-sample screening -> bank.pt")
    sp.add_argument("--out", default=None)
    sp = add("pretrain", _cmd_pretrain, "stage 1 -> stage1.pt")
    sp.add_argument("--bank", default=None)
    sp.add_argument("--out", default=None)
    sp = add("train", _cmd_train, "stage 2 -> stage2/generator.pt")
    sp.add_argument("--bank", default=None)
    sp.add_argument("--init", default=None, help="stage-1 checkpoint (default: run stage 1 first)")
    sp.add_argument("--no-pretrain", action="store_true", help="skip stage 1 (random conditioning)")
    sp.add_argument("--out-dir", default=None)
    sp.add_argument("--resume", action="store_true")
    sp = add("eval", _cmd_eval, "sub-source transfer evaluation -> CSV")
    sp.add_argument("--ckpt", default=None, help="ESMA generator.pt")
    sp.add_argument("--ttp", nargs="*", default=None, help="TTP checkpoints target=path (one per target)")
    sp.add_argument("--csv", default=None)
    sp = add("ttp-train", _cmd_ttp, "TTP baseline generator for one target")
    sp.add_argument("--target", type=int, required=True)
    sp.add_argument("--out-dir", default=None)
    sp.add_argument("--resume", action="store_true")
    sp = add("es-iterative", _cmd_es, "easy vs random vs hard anchor matching in iterative attacks -> CSV")
    sp.add_argument("--csv", default=None)
    sp = sub.add_parser("quick", help="digits quick reproduction")
    sp.add_argument("--out", default="runs/esma/quick")
    sp.add_argument("--full", action="store_true")
    sp.set_defaults(fn=_cmd_quick)
    return p


def main(argv: list[str] | None = None) -> int:
    from papers_shared.data import DatasetNotFoundError

    args = _parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"esma {args.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
