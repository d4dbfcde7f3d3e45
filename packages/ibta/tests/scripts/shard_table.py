"""Run a tiny digits transfer table (run under torchrun for the sharded version); rank 0 writes rows.json.

python shard_table.py OUT_DIR      # or: torchrun --nproc-per-node 2 shard_table.py OUT_DIR
"""

import json
import sys

import torch

from ibta.config import ExperimentConfig
from ibta.experiment import run_experiment
from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.distributed import is_main_process, world_size

OVERRIDES = [
    "max_images=24",
    "batch_size=12",
    "digits.epochs=1",
    "attacks=[mi,ibta_mi,di,ibta_di,ti]",
    "attack.steps=2",
    "name=shard",
]


def main(out: str) -> None:
    torch.set_num_threads(1)
    cfg = load_config(ExperimentConfig, resolve_config("ibta", "digits_tiny"), [*OVERRIDES, f"out_dir={out}"])
    rows = run_experiment(cfg, progress=False)
    if is_main_process():
        with open(f"{out}/rows.json", "w") as fh:
            json.dump({"world_size": world_size(), "rows": rows}, fh, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
