"""``g2g-fscil`` command line (spec §7).

Sub-commands:
  run / train  a paper table row from a config (``configs/cifar100.yaml`` ...): pre-train, meta-train,
               incremental sessions; writes ``results.json`` and ``model.pt`` per seed (``--resume``)
  pretrain     stage 1 only (base-class CE), writes ``pretrain.pt``
  metatrain    stages 1-2 (pre-training, episodic meta-training), writes ``metatrain.pt``
  ablate       component ablation (v2v, g2g, g2g+lgp, g2g+cag2g, full) on one shared pre-training
  eval         evaluate a saved ``model.pt`` on every session its memory covers
  quick        the digits quick reproduction (same as ``uv run reproduce g2g-fscil``)
  show-config  print the resolved config (YAML)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from papers_shared.config import ConfigError, config_to_dict, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["ABLATIONS", "main"]

ABLATIONS = {
    "v2v": ("v2v", {}),
    "g2g": ("g2g", {"lgp": None, "cag2g": False}),
    "g2g+lgp": ("g2g", {"cag2g": False}),
    "g2g+cag2g": ("g2g", {"lgp": None}),
    "full": ("g2g", {}),
}


def _cfg(args):
    from g2g_fscil.config import ExperimentConfig

    return load_config(ExperimentConfig, args.config, args.overrides)


def _pretrained_state(cfg, data, seed: int, out: Path, resume: bool, progress: bool) -> dict:
    from g2g_fscil.trainer import build_model, pretrain
    from papers_shared.checkpoints import atomic_save, load_checkpoint
    from papers_shared.device import get_device, seed_everything

    path = out / "pretrain.pt"
    if resume and path.is_file():
        return load_checkpoint(path)["model"]
    gen = seed_everything(seed)
    device = get_device(cfg.device)
    net = build_model(data, cfg.model).to(device)
    losses = pretrain(
        net,
        data,
        cfg.pretrain_epochs,
        cfg.pretrain_lr,
        cfg.pretrain_step,
        cfg.pretrain_batch,
        device,
        gen,
        out / "ckpt_pretrain",
        resume,
        progress,
        cfg.num_workers,
    )
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_save({"model": state, "losses": losses}, path)
    return state


def _summary(report) -> dict:
    return {
        "method": report.method,
        "seed": report.seed,
        "accs": report.accs,
        "avg": report.avg,
        "pd": report.pd,
    }


def _cmd_run(args) -> int:
    from g2g_fscil.data import load_fscil_data
    from g2g_fscil.trainer import run_fscil
    from papers_shared.checkpoints import atomic_save

    cfg = _cfg(args)
    method = args.method or cfg.method
    data = load_fscil_data(cfg)
    root = Path(cfg.out_dir) / cfg.name / method
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    rows = []
    for seed in cfg.seeds:
        out = root / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        state = _pretrained_state(cfg, data, seed, out, args.resume, not args.quiet)
        rep, model = run_fscil(data, cfg, method, seed, state, out, args.resume, not args.quiet)
        rep.save(out / "results.json")
        atomic_save(
            {"model": model.state_dict(), "config": config_to_dict(cfg), "method": method}, out / "model.pt"
        )
        rows.append(_summary(rep))
        print(json.dumps(rows[-1]))
    print(f"results: {root}")
    return 0


def _cmd_pretrain(args) -> int:
    from g2g_fscil.data import load_fscil_data

    cfg = _cfg(args)
    data = load_fscil_data(cfg)
    for seed in cfg.seeds:
        out = Path(cfg.out_dir) / cfg.name / "pretrain" / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        _pretrained_state(cfg, data, seed, out, args.resume, not args.quiet)
        print(f"pre-trained weights: {out / 'pretrain.pt'}")
    return 0


def _cmd_metatrain(args) -> int:
    from g2g_fscil.data import load_fscil_data
    from g2g_fscil.trainer import build_model, metatrain, method_config
    from papers_shared.checkpoints import atomic_save
    from papers_shared.device import get_device, seed_everything

    cfg = _cfg(args)
    method = args.method or cfg.method
    if method not in ("g2g", "v2v"):
        raise ValueError(f"metatrain needs a memory method (g2g or v2v), got {method!r}")
    data = load_fscil_data(cfg)
    device = get_device(cfg.device)
    for seed in cfg.seeds:
        out = Path(cfg.out_dir) / cfg.name / method / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        state = _pretrained_state(cfg, data, seed, out, args.resume, not args.quiet)
        gen = seed_everything(seed)
        model = build_model(data, method_config(cfg.model, method, cfg.v2v_mode)).to(device)
        model.load_state_dict(state, strict=False)
        hist = metatrain(
            model,
            data,
            None,
            device,
            gen,
            out / f"meta_{method}",
            cfg.ckpt_every,
            args.resume,
            not args.quiet,
        )
        atomic_save({"model": model.state_dict(), "hist": hist, "method": method}, out / "metatrain.pt")
        print(f"meta-trained weights: {out / 'metatrain.pt'} (final loss {hist['loss'][-1]:.4f})")
    return 0


def _cmd_ablate(args) -> int:
    from g2g_fscil.data import load_fscil_data
    from g2g_fscil.trainer import run_fscil
    from papers_shared.checkpoints import atomic_write_text

    cfg = _cfg(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in ABLATIONS]
    if bad:
        raise ValueError(f"unknown ablation variants {bad}; valid: {list(ABLATIONS)}")
    data = load_fscil_data(cfg)
    root = Path(cfg.out_dir) / cfg.name / "ablation"
    results = {}
    for seed in cfg.seeds:
        out = root / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        state = _pretrained_state(cfg, data, seed, out, args.resume, not args.quiet)
        for v in variants:
            method, changes = ABLATIONS[v]
            vcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))
            rep, _ = run_fscil(data, vcfg, method, seed, state, out / v, args.resume, not args.quiet)
            results.setdefault(v, []).append(rep.to_dict())
            print(json.dumps({"variant": v, **_summary(rep)}))
    atomic_write_text(root / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {root / 'results.json'}")
    return 0


def _cmd_eval(args) -> int:
    from g2g_fscil.data import load_fscil_data
    from g2g_fscil.trainer import build_model, evaluate, method_config
    from papers_shared.checkpoints import load_checkpoint

    cfg = _cfg(args)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    state = load_checkpoint(ckpt)
    method = state.get("method", cfg.method)
    if method in ("ncm", "teen"):
        raise ValueError(
            "eval reads G2G/V2V checkpoints (model.pt of `g2g-fscil run`); NCM/TEEN have no memory"
        )
    data = load_fscil_data(cfg)
    model = build_model(data, method_config(cfg.model, method, cfg.v2v_mode))
    model.load_state_dict(state["model"])
    stored = set(model.memory.class_ids.tolist())
    accs = []
    for s in data.split:
        if not set(s.classes) <= stored:
            break
        accs.append(evaluate(model, data, s.index, cfg.eval_batch)["acc"])
    print(json.dumps({"method": method, "sessions": len(accs), "accs": accs}))
    return 0


def _cmd_quick(args) -> int:
    from g2g_fscil.config import QuickConfig
    from g2g_fscil.quick import quick_reproduction
    from papers_shared.results import save_and_report

    qc = load_config(QuickConfig, args.config, args.overrides) if (args.config or args.overrides) else None
    res = quick_reproduction(Path(args.out), quick=not args.full, cfg=qc)
    save_and_report(res, args.out)
    return 0


def _cmd_show(args) -> int:
    from g2g_fscil.config import QuickConfig

    cls = QuickConfig if args.quick else None
    cfg = load_config(cls, args.config, args.overrides) if cls else _cfg(args)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="g2g-fscil", description="G2G explicit memory for FSCIL.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p, config_required=True):
        p.add_argument("--config", required=config_required, help="YAML config (configs/*.yaml)")
        p.add_argument("overrides", nargs="*", help="key=value overrides (model.alpha=0.7, seeds=[0,1])")

    for name in ("run", "train"):
        p = sub.add_parser(name, help="full FSCIL run of a paper table (pretrain, metatrain, sessions)")
        common(p)
        p.add_argument("--method", choices=["g2g", "v2v", "ncm", "teen"], default=None)
        p.add_argument("--resume", action="store_true")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(fn=_cmd_run)
    p = sub.add_parser("pretrain", help="stage 1 only")
    common(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_cmd_pretrain)
    p = sub.add_parser("metatrain", help="stages 1-2 (pre-training, then episodic meta-training)")
    common(p)
    p.add_argument("--method", choices=["g2g", "v2v"], default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_cmd_metatrain)
    p = sub.add_parser("ablate", help="component ablation on one shared pre-training")
    common(p)
    p.add_argument("--variants", default=",".join(ABLATIONS))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_cmd_ablate)
    p = sub.add_parser("eval", help="evaluate a saved model.pt")
    common(p)
    p.add_argument("--checkpoint", required=True)
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("quick", help="digits quick reproduction")
    p.add_argument("--out", default="runs/g2g-fscil/quick")
    p.add_argument("--full", action="store_true", help="5 seeds instead of 3")
    common(p, config_required=False)
    p.set_defaults(fn=_cmd_quick)
    p = sub.add_parser("show-config", help="print the resolved config")
    common(p, config_required=False)
    p.add_argument("--quick", action="store_true", help="resolve a QuickConfig instead")
    p.set_defaults(fn=_cmd_show)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"g2g-fscil {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
