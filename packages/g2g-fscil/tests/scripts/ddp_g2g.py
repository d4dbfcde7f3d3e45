"""Pre-train, meta-train (checkpoint, then resume) and evaluate a tiny G2G model; alone or under torchrun.

    python ddp_g2g.py OUT.json CKPT_DIR            # one process
    torchrun --nproc-per-node 2 ddp_g2g.py OUT.json CKPT_DIR

BatchNorm stays in eval mode (``freeze_bn``): CPU has no SyncBatchNorm, so batch statistics over a
shard would differ from those over the whole batch (see test_distributed.py).
"""

import json
import sys
from pathlib import Path

import torch

from g2g_fscil.config import G2GConfig
from g2g_fscil.data import digits_data
from g2g_fscil.experiment import build_model, evaluate, write_base_memory
from g2g_fscil.trainer import metatrain, pretrain
from papers_shared import distributed as pd

out, ckpt = Path(sys.argv[1]), Path(sys.argv[2])
info = pd.init_distributed("cpu")
torch.manual_seed(0)
data = digits_data(6, 2, 5, 0)
cfg = G2GConfig(
    backbone="tiny", in_channels=1, feat_dim=16, local_pool=2, meta_ways=4, meta_shots=2, meta_queries=2,
    lr_step=100, freeze_bn=True,
)  # fmt: skip
net = build_model(data, cfg)
idx = data.split[0].train_idx
idx = idx[: idx.numel() // 2 * 2]  # an even count: the samplers of 1 and 2 processes see the same images
pretrain(net, data, 2, 0.05, 10, 64, "cpu", seed=3, ckpt_dir=ckpt / "pre", train_idx=idx)
metatrain(net, data, 2, "cpu", torch.Generator().manual_seed(7), ckpt / "meta", ckpt_every=2)
resumed = build_model(data, cfg)  # a fresh model continues from the checkpoint at episode 2
hist = metatrain(resumed, data, 4, "cpu", torch.Generator(), ckpt / "meta", ckpt_every=2, resume=True)
write_base_memory(resumed, data)
ev = evaluate(resumed, data, 0, batch=64)
if pd.is_main_process():
    params = {k: v.flatten().tolist() for k, v in resumed.named_parameters()}
    out.write_text(json.dumps({"world": info.world_size, "params": params, "hist": hist, "eval": ev}))
pd.cleanup()
