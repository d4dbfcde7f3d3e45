"""``mecoin`` command line.

Sub-commands (each takes ``--config configs/x.yaml`` and ``key=value`` overrides, e.g.
``mecoin.epochs_per_session=500 seeds=[1,2,3]``):

  pretrain     pre-train the encoder of every seed on the base session (cached for ``run``)
  run          a paper table: every method and seed of the config -> ``<out_dir>/<name>/results.json``
  ablate       Mecoin variants (no_inter, no_graphinfo, no_meco, distill_*, ...) -> ``ablation.json``
  show-config  print the resolved config (YAML)
  quick        the CSBM quick reproduction (same as ``uv run reproduce mecoin``)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from papers_shared.config import ConfigError, config_to_dict, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["main"]


def _load(args) -> object:
    from mecoin.config import ExperimentConfig

    overrides = []
    dataset = getattr(args, "dataset", None)
    if args.config is None and dataset is not None:
        from mecoin.data import DATASET_DEFAULTS

        d = DATASET_DEFAULTS.get(dataset, {})
        overrides += [f"protocol.{k}={d[k]}" for k in ("base_classes", "ways") if k in d]
        overrides.append(f"name={dataset}")
    overrides += list(args.overrides or [])
    for flag, key in (
        ("dataset", "dataset"),
        ("backbone", "encoder.backbone"),
        ("hidden", "encoder.hidden"),
        ("distill", "mecoin.distill"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "method", None):
        overrides.append(f"methods=[{','.join(args.method)}]")
    if getattr(args, "legacy", False):
        overrides.append("legacy=true")
    if getattr(args, "out", None) is not None:
        overrides.append(f"out_dir={args.out}")
    return load_config(ExperimentConfig, args.config, overrides)


def _table(summary: dict) -> str:
    lines = [f"{'method':<22}{'avg':>8}{'PD':>8}{'last':>8}{'forget':>8}  per-session accuracy (%)"]
    for name, s in summary.items():
        accs = " ".join(f"{a:.1f}" for a in s["accs_mean"])
        lines.append(
            f"{name:<22}{s['avg']:>8.2f}{s['pd']:>8.2f}{s['last']:>8.2f}{s['forgetting']:>8.2f}  {accs}"
        )
    return "\n".join(lines)


def _cmd_pretrain(args) -> int:
    from mecoin.data import build_task
    from mecoin.runner import pretrain_task
    from papers_shared.device import get_device

    cfg = _load(args)
    out = Path(cfg.out_dir) / cfg.name
    device = get_device(cfg.device)
    for seed in cfg.seeds:
        task = build_task(cfg, seed).to(device)
        res = pretrain_task(task, cfg, seed, device, cache_dir=out / "pretrain")
        print(
            f"seed {seed}: base val acc {res.best_val_acc:.4f} (epoch {res.best_epoch}) -> {out / 'pretrain'}"
        )
    return 0


def _cmd_run(args) -> int:
    from mecoin.runner import run_experiment

    cfg = _load(args)
    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    result = run_experiment(cfg, resume=args.resume)
    print(_table(result["summary"]))
    print(f"results: {out / 'results.json'}")
    return 0


def _cmd_ablate(args) -> int:
    from mecoin.config import ABLATIONS
    from mecoin.runner import run_experiment
    from papers_shared.checkpoints import atomic_write_text

    cfg = _load(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {unknown}; known: {list(ABLATIONS)}")
    summary = {}
    for v in variants:
        vcfg = copy.deepcopy(cfg)
        vcfg.methods = ["mecoin"]
        vcfg.name = f"{cfg.name}-{v}"
        for key, value in ABLATIONS[v].items():
            setattr(vcfg.mecoin, key, value)
        vcfg.mecoin.__post_init__()
        res = run_experiment(vcfg, resume=args.resume, out_dir=Path(cfg.out_dir) / cfg.name / "ablation")
        summary[v] = res["summary"]["mecoin"]
    path = Path(cfg.out_dir) / cfg.name / "ablation.json"
    atomic_write_text(path, json.dumps({"variants": summary, "config": config_to_dict(cfg)}, indent=2) + "\n")
    print(_table(summary))
    print(f"ablation: {path}")
    return 0


def _cmd_show(args) -> int:
    import yaml

    print(yaml.safe_dump(config_to_dict(_load(args)), sort_keys=False), end="")
    return 0


def _cmd_quick(args) -> int:
    from mecoin.quick import quick_reproduction
    from papers_shared.results import write_result

    res = quick_reproduction(args.out, quick=not args.full)
    path = write_result(res, args.out)
    for c in res.claims:
        print(
            f"[{'holds' if c.holds else 'FAILS'}] {c.claim}: {c.method_value:.2f} vs {c.baseline_value:.2f}"
        )
    print(f"quick reproduction: {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mecoin", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, methods: bool = False):
        sp.add_argument("--config", type=Path, help="YAML experiment config (configs/*.yaml)")
        sp.add_argument("--dataset", help="corafull | cs | computers | reddit | csbm")
        sp.add_argument("--backbone", help="gcn | gat | any torch_geometric conv class name")
        sp.add_argument("--hidden", type=int, help="encoder width h (spec §3.1; 128 in the paper)")
        sp.add_argument("--legacy", action="store_true", help="every official-code quirk (spec §6)")
        sp.add_argument("--out", type=Path, help="output folder (out_dir)")
        if methods:
            sp.add_argument("--method", nargs="+", help="methods to run (mecoin, finetune, joint, ncm, ...)")
            sp.add_argument("--distill", help="bidirectional | gnn_to_mram | mram_to_gnn | none")
            sp.add_argument("--resume", action="store_true", help="continue from the last checkpoints")
        sp.add_argument("overrides", nargs="*", help="key=value config overrides")

    common(sub.add_parser("pretrain", help="pre-train the encoders (base session)"))
    common(sub.add_parser("run", help="run a paper table"), methods=True)
    sp = sub.add_parser("ablate", help="Mecoin ablation variants")
    common(sp, methods=True)
    sp.add_argument(
        "--variants", default="full,no_inter,no_graphinfo,no_meco", help="comma-separated variants"
    )
    common(sub.add_parser("show-config", help="print the resolved config"))
    q = sub.add_parser("quick", help="CSBM quick reproduction")
    q.add_argument("--out", type=Path, default=Path("runs/mecoin/quick"))
    q.add_argument("--full", action="store_true", help="the longer variant (more seeds)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "pretrain": _cmd_pretrain,
        "run": _cmd_run,
        "ablate": _cmd_ablate,
        "show-config": _cmd_show,
        "quick": _cmd_quick,
    }[args.command]
    try:
        return handler(args)
    except (ConfigError, DatasetNotFoundError, ValueError) as exc:
        print(f"mecoin {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
