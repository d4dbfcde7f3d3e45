"""A small merging table, every stage, run by one process or sharded over a ``torchrun`` launch.

python -m torch.distributed.run --nproc-per-node 2 shard_table.py OUT.json
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from papers_shared.distributed import cleanup, init_distributed, is_main_process
from papers_shared.results import to_jsonable, write_json
from t_switch.config import AutoSwitchConfig, BaselineConfig, SwitchConfig
from t_switch.experiment import run_merging
from t_switch.task_vector import task_vector

TASKS = ("a", "b", "c")


def table(device: str | None = None, methods=("individual", "task_arithmetic", "ties", "emr")) -> dict:
    torch.manual_seed(0)
    pre = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    tvs, evals, vals, queries = {}, {}, {}, {}
    for i, t in enumerate(TASKS):
        ft = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        ft.load_state_dict(pre.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        tvs[t] = task_vector(pre, ft, exclude=())
        center = torch.zeros(6)
        center[i] = 3.0
        x = center + torch.randn(48, 6, generator=g)
        y = ft(x).argmax(1).detach()
        evals[t] = [(x[:16], y[:16]), (x[16:32], y[16:32])]
        vals[t] = [(x[32:40], y[32:40])]
        queries[t] = [x[40:]]
    if device is not None:
        pre.to(device)
        tvs = {t: tv.to(device) for t, tv in tvs.items()}
    return run_merging(
        pre, tvs, evals, SwitchConfig(drop_ratio=0.5, exclude=[]), AutoSwitchConfig(k=3, n_query=8),
        BaselineConfig(methods=list(methods), ta_alpha_grid=[0.3, 1.0]),
        stages=["pretrained", "baselines", "t_switch", "auto_switch", "storage", "pulse"],
        query_loaders=queries, feature_fn=pre[0], pulse_ratios=[0.0, 0.5], val_loaders=vals, device=device,
    )  # fmt: skip


if __name__ == "__main__":
    init_distributed("cpu")
    result = table()
    if is_main_process():
        write_json(to_jsonable(result), sys.argv[1])
    cleanup()
