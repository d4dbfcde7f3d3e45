"""``fsg-bnn`` command line: ``train``, ``pretrain``, ``eval``, ``quick``, ``methods``.

fsg-bnn train --config configs/cifar10_resnet20.yaml optim.method=multifc train.seed=1 [--resume]
fsg-bnn pretrain --config configs/cifar10_resnet20.yaml
fsg-bnn eval --config configs/cifar10_resnet20.yaml --checkpoint runs/.../ckpt/ckpt-000000100.pt
fsg-bnn quick --out results/quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fsg_bnn.config import METHODS, ExperimentConfig
from papers_shared.config import ConfigError, config_to_dict, load_config
from papers_shared.data import DatasetNotFoundError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fsg-bnn", description="Fast and Slow Gradient generation for BNNs")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (
        ("train", "FP pretraining (if needed) then binarized training"),
        ("pretrain", "full-precision pretraining only"),
        ("eval", "evaluate a checkpoint on the test set"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.method=ste")
        if name != "eval":
            s.add_argument("--resume", action="store_true", help="resume from the newest checkpoint")
            s.add_argument("--no-progress", action="store_true", help="no progress bars")
        else:
            s.add_argument("--checkpoint", type=Path, required=True, help="a ckpt-*.pt of `train`")
    q = sub.add_parser("quick", help="the digits experiment of spec §8 (writes JSON + PNG)")
    q.add_argument("--out", type=Path, default=Path("results/quick"))
    q.add_argument("--full", action="store_true", help="the longer variant (more iterations/seeds)")
    sub.add_parser("methods", help="list the training methods")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "methods":
            print("\n".join(METHODS))
            return 0
        if args.cmd == "quick":
            from fsg_bnn.quick import quick_reproduction
            from papers_shared.results import save_and_report

            res = quick_reproduction(args.out, quick=not args.full)
            save_and_report(res, args.out)
            return 0
        cfg = load_config(ExperimentConfig, args.config, args.overrides)
        if args.cmd == "pretrain":
            from fsg_bnn.experiment import run_pretrain

            print(run_pretrain(cfg, resume=args.resume, progress=not args.no_progress))
            return 0
        if args.cmd == "train":
            from fsg_bnn.experiment import run_experiment

            res = run_experiment(cfg, resume=args.resume, progress=not args.no_progress)
            summary = {k: res[k] for k in ("best_test_acc", "last10_mean_test_acc", "final_train_loss")}
            print(json.dumps({"method": cfg.optim.method, **summary}))
            return 0
        return _evaluate(cfg, args.checkpoint)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"fsg-bnn: error: {exc}", file=sys.stderr)
        return 2


def _evaluate(cfg: ExperimentConfig, checkpoint: Path) -> int:
    from fsg_bnn.convert import binarize
    from fsg_bnn.data import make_loaders
    from fsg_bnn.experiment import build_experiment_model
    from fsg_bnn.trainer import Trainer
    from papers_shared.checkpoints import load_checkpoint
    from papers_shared.device import get_device

    device = get_device(cfg.train.device)
    state = load_checkpoint(checkpoint, map_location=device)
    model = binarize(
        build_experiment_model(cfg), cfg.model.quantizer, cfg.model.bits, bwn_scale=cfg.model.bwn_scale
    )
    model.load_state_dict(state["trainer"]["model"] if "trainer" in state else state)
    _, test_loader = make_loaders(cfg.data, cfg.model.num_classes, cfg.train.seed)
    import torch

    res = Trainer(model.to(device), torch.optim.SGD(model.parameters(), lr=0.0), device).evaluate(test_loader)
    print(json.dumps({"config": config_to_dict(cfg)["name"], **res}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
