"""FSG and MetaQuant (MultiFC) on tiny BN-free binarized MLPs, alone or under torchrun.

    python ddp_fsg.py OUT.json WORK_DIR                         # one process, global batch 32
    torchrun --nproc-per-node 2 ddp_fsg.py OUT.json WORK_DIR    # two gloo processes, 16 each

(test_distributed.py runs the one-process case in its own process through :func:`run`.)

For each method: 3 steps, a checkpoint (rank 0), a fresh trainer that resumes from it for 3 more steps;
the BNN weights, the meta nets, the HGS windows and the metrics are written to OUT.json (rank 0) with
the largest difference between the processes' copies. Then ``fsg-bnn train`` (the CLI: FP weights,
FSG, sharded evaluation, rank-0 result files) on a BN-free one-layer digits model. The models have no
BatchNorm: CPU has no SyncBatchNorm, so per-process batch statistics would differ from one process's.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from fsg_bnn.cli import main
from fsg_bnn.config import DataConfig, OptimConfig
from fsg_bnn.convert import binarize
from fsg_bnn.data import make_loaders
from fsg_bnn.fsg import build_optimizer
from fsg_bnn.models import mlp
from fsg_bnn.trainer import Trainer
from papers_shared import distributed as pd
from papers_shared.checkpoints import CheckpointManager, load_safetensors, save_safetensors

DATA = DataConfig(dataset="digits", batch_size=32, test_batch_size=256, num_workers=0)
SMALL = {"d_state": 4, "d_conv": 4, "expand": 4, "hgs_length": 3}


def make_trainer(method: str, max_steps: int) -> Trainer:
    torch.manual_seed(0)
    layers = [nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)]
    model = binarize(nn.Sequential(*layers))
    opt = build_optimizer(model, OptimConfig(method=method, lr=1e-2, **SMALL))
    return Trainer(model, opt, "cpu", lr_step=0, max_steps=max_steps)


def state(tr: Trainer) -> dict[str, torch.Tensor]:
    s = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    s.update({f"meta.{k}": v for k, v in tr.optimizer.meta_nets.state_dict().items()})
    hgs = getattr(tr.optimizer, "hgs", None)
    if hgs is not None:
        for name, buf in hgs.state_dict()["buffers"].items():
            s.update({f"hgs.{name}.{i}": t for i, t in enumerate(buf)})
    return s


def spread(s: dict[str, torch.Tensor]) -> float:
    """The largest difference between any process's copy and rank 0's."""
    copies = pd.gather_objects({k: v.detach().clone() for k, v in s.items()})
    return max(float((c[k] - copies[0][k]).abs().max()) for c in copies for k in s)


def run(out: Path, work: Path) -> None:
    info = pd.init_distributed("cpu")
    report: dict = {"world": info.world_size}
    for method in ("fsg", "multifc"):
        train, test = make_loaders(DATA, 10, seed=3)
        ckpt = CheckpointManager(work / method)
        make_trainer(method, 3).fit(train, 1, test, ckpt)  # epoch 0 stops after 3 steps: ckpt-000000001.pt
        resumed = make_trainer(method, 6)  # a fresh model and optimizer continue from the checkpoint
        hist = resumed.fit(train, 2, test, ckpt, resume=True)
        s = state(resumed)
        report[method] = {
            "state": {k: v.flatten().tolist() for k, v in s.items()},
            "hist": hist,
            "spread": spread(s),
            "steps": resumed.global_step,
        }

    # the CLI: FP weights (rank 0 writes them), then FSG on a one-layer (BN-free) binarized MLP
    fp = work / "fp.safetensors"
    if pd.is_main_process():
        torch.manual_seed(1)
        save_safetensors(mlp(64, (), 10).state_dict(), fp)
    pd.barrier()
    cli_out = work / "cli"
    args = ["train", "--config", "quick", "model.hidden=[]", f"train.pretrained={fp}", "train.max_steps=3"]
    args += ["train.epochs=1", "data.batch_size=64", "optim.hgs_length=2", "optim.lr=1e-2"]
    code = main([*args, "--device", "cpu", "--no-progress", "--out", str(cli_out)])  # leaves the group
    if pd.is_main_process():
        weights, _ = load_safetensors(cli_out / "model.safetensors")
        report["cli"] = {
            "code": code,
            "result": json.loads((cli_out / "result.json").read_text()),
            "weights": {k: v.flatten().tolist() for k, v in weights.items()},
        }
        out.write_text(json.dumps(report))


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
