"""``smr-ssm`` command line (contract: ``smr-ssm <sub-command> --config x.yaml [key=value ...]``).

Sub-commands: ``lm`` (WikiText-103 table), ``lra`` (LRA table), ``nss`` (sampling-shift / NSS
experiment of spec §8), ``bench`` (training-speed claim R3), ``quick`` (the quick reproduction).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from papers_shared.config import ConfigError, load_config
from papers_shared.data import DatasetNotFoundError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smr-ssm", description="State Memory Replay for SSMs under non-uniform sampling."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, config_required: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", type=Path, required=config_required, help="YAML config (configs/*.yaml)")
        sp.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
        return sp

    lm = add("lm", "language modelling on WikiText-103 (spec §5, R2)")
    lm.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    lm.add_argument("--no-progress", action="store_true")
    lra = add("lra", "one Long Range Arena task (spec §5, R1)")
    lra.add_argument(
        "--task",
        choices=["listops", "text", "retrieval", "image", "pathfinder", "pathx"],
        help="overrides the config's task",
    )
    lra.add_argument("--data-dir", type=Path, help="the unpacked lra_release folder (overrides data_dir)")
    lra.add_argument("--resume", action="store_true")
    lra.add_argument("--no-progress", action="store_true")
    nss = add("nss", "sampling-shift / NSS experiment (spec §8, R4)")
    nss.add_argument("--out", type=Path, help="write the JSON results here (default <out_dir>/nss.json)")
    bench = add(
        "bench", "forward+backward time of layers with and without SMR (spec §5, R3)", config_required=False
    )
    bench.add_argument("--layers", help="comma-separated specs, e.g. s4d,s4d+smr,s5,s5+smr:literal")
    bench.add_argument("--L", dest="lengths", help="comma-separated lengths, e.g. 1024,4096")
    quick = sub.add_parser("quick", help="the quick reproduction (writes JSON and PNG)")
    quick.add_argument("--out", type=Path, default=Path("results/quick"))
    quick.add_argument("--full", action="store_true", help="5 seeds, 600 steps")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (``--resume a=1``): argparse leaves those over
    bad = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return _run(args)
    except (ConfigError, DatasetNotFoundError) as exc:
        print(f"smr-ssm {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from smr_ssm.config import BenchConfig, LMConfig, LRAConfig, NSSConfig

    if args.command == "lm":
        from smr_ssm.runners import run_lm

        cfg = load_config(LMConfig, args.config, args.overrides)
        res = run_lm(cfg, resume=args.resume, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2))
        return 0
    if args.command == "lra":
        from smr_ssm.runners import run_lra

        over = list(args.overrides)
        if args.task:
            over.append(f"task={args.task}")
        if args.data_dir:
            over.append(f"data_dir={args.data_dir}")
        cfg = load_config(LRAConfig, args.config, over)
        res = run_lra(cfg, resume=args.resume, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2))
        return 0
    if args.command == "nss":
        from papers_shared.checkpoints import atomic_write_text
        from smr_ssm.nss import run_nss
        from smr_ssm.quick import build_claims, host_name

        cfg = load_config(NSSConfig, args.config, args.overrides)
        res = run_nss(cfg)
        claims = build_claims(res["summary"], len(cfg.seeds), host=host_name(cfg.layer_type))
        res["claims"] = [c.__dict__ for c in claims]
        res["config"] = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        out = args.out or Path(cfg.out_dir) / "nss.json"
        atomic_write_text(out, json.dumps(res, indent=2, default=float) + "\n")
        for c in res["claims"]:
            print(
                f"{'HOLDS' if c['holds'] else 'fails'}: {c['claim']} ({c['method_value']:.4g} {c['op']} {c['baseline_value']:.4g})"
            )
        print(f"wrote {out}")
        return 0
    if args.command == "bench":
        from smr_ssm.runners import run_bench

        over = list(args.overrides)
        if args.layers:
            over.append(f"layers=[{args.layers}]")
        if args.lengths:
            over.append(f"lengths=[{args.lengths}]")
        cfg = load_config(BenchConfig, args.config, over)
        res = run_bench(cfg)
        for r in res["rows"]:
            ratio = f"{r['ratio_to_baseline']:.3f}x" if r["ratio_to_baseline"] else "-"
            print(
                f"{r['layer']:>16}  L={r['L']:>6}  {r['ms']:9.2f} ms  {ratio:>8}  {r['tokens_per_s']:.0f} tok/s"
            )
        return 0
    from papers_shared.results import write_result
    from smr_ssm.quick import quick_reproduction

    args.out.mkdir(parents=True, exist_ok=True)
    res = quick_reproduction(args.out, quick=not args.full)
    path = write_result(res, args.out)
    print(f"{sum(c.holds for c in res.claims)}/{len(res.claims)} claims hold -> {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
