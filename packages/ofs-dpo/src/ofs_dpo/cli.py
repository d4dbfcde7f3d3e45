"""``ofs-dpo`` command line: ``ofs-dpo <command> --config configs/x.yaml [key=value ...]``.

Commands:
  run          train and evaluate every (seed, method) of an experiment config (in-domain or cross-domain)
  eval         evaluate a saved adapter (e.g. from ``OFSDPOTrainer.export_leader``) on the config's domains
  toy          the quick reproduction of spec §8 (JSON + PNG into --out)
  show-config  print the resolved config
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _load(args: argparse.Namespace):
    from ofs_dpo.config import ExperimentConfig
    from papers_shared.config import load_config

    return load_config(ExperimentConfig, args.config, args.overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from ofs_dpo.experiments import run_experiment

    cfg = _load(args)
    results = run_experiment(cfg, resume=args.resume, progress=not args.quiet)
    print(json.dumps(results["aggregate"], indent=2))
    print(f"results: {Path(cfg.output_dir) / cfg.name / 'results.json'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from peft import PeftModel

    from ofs_dpo.evaluation import implicit_reward_accuracy
    from ofs_dpo.experiments import _metric_fns, build_model_and_tokenizer, load_domains

    cfg = _load(args)
    adapter = Path(args.adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter at {adapter} (expected adapter_config.json)")
    model, tok = build_model_and_tokenizer(cfg, cfg.seeds[0])
    data = load_domains(cfg, tok, model)
    pm = PeftModel.from_pretrained(model, str(adapter))
    beta = float(cfg.train.get("beta", 0.1))
    out = {}
    for name, splits in data.items():
        out[name] = {"reward_accuracy": implicit_reward_accuracy(pm, splits["test"], tok, "default", beta)}
        for metric, fn in _metric_fns(cfg, next(pm.parameters()).device).items():
            out[name][metric] = fn(pm, tok, name, splits["test"])
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        from papers_shared.checkpoints import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from ofs_dpo.quick import quick_reproduction
    from papers_shared.results import write_result

    res = quick_reproduction(Path(args.out), quick=not args.full)
    path = write_result(res, args.out)
    for c in res.claims:
        print(f"[{'ok' if c.holds else 'NO'}] {c.claim}: {c.method_value:.4g} vs {c.baseline_value:.4g}")
    print(f"wrote {path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    import yaml

    from papers_shared.config import config_to_dict

    print(yaml.safe_dump(config_to_dict(_load(args)), sort_keys=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofs-dpo", description="OFS-DPO / COFS-DPO experiments (arXiv 2406.05534)."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True, type=Path, help="experiment YAML (see configs/)")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1] train.beta=0.2")

    run = sub.add_parser("run", help="train + evaluate an experiment config")
    with_config(run)
    run.add_argument(
        "--resume", action="store_true", help="continue from saved runner states and checkpoints"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars or trl log lines")
    run.set_defaults(func=_cmd_run)

    ev = sub.add_parser("eval", help="evaluate a saved adapter on the config's domains")
    with_config(ev)
    ev.add_argument("--adapter", required=True, help="folder with adapter_config.json + adapter weights")
    ev.add_argument("--out", default=None, help="also write the JSON here")
    ev.set_defaults(func=_cmd_eval)

    toy = sub.add_parser("toy", help="the toy experiments of spec §8 (quick reproduction)")
    toy.add_argument("--out", default="results/quick", help="output folder")
    toy.add_argument("--full", action="store_true", help="5 seeds instead of 3")
    toy.set_defaults(func=_cmd_toy)

    show = sub.add_parser("show-config", help="print the resolved config")
    with_config(show)
    show.set_defaults(func=_cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ofs-dpo`` console script; returns the exit status."""
    from papers_shared.config import ConfigError
    from papers_shared.data import DatasetNotFoundError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"ofs-dpo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
