"""Train ICL and ER on a capped digits stream, alone or under torchrun (see test_distributed.py).

``python ddp_stream.py OUT.json CKPT_DIR`` writes, from rank 0, the trained parameters, the accuracy tables
and the checkpoint files of full runs, and (ICL) of a run interrupted after task 2 and resumed from its
checkpoint. The tiny ViT is random and frozen (no pre-training: the test is about equality, not accuracy).
"""

import json
import sys
from pathlib import Path

import torch

from icl_vmf.config import DataConfig, ExperimentConfig, System1Config, TrainConfig
from icl_vmf.data import build_stream
from icl_vmf.encoders import prepare_encoder, tiny_vit_config
from icl_vmf.learner import build_learner
from icl_vmf.system2 import OracleSystem2
from icl_vmf.trainer import run_stream
from papers_shared import distributed as dist

out, ckpt = Path(sys.argv[1]), Path(sys.argv[2])
info = dist.init_distributed("cpu")
torch.set_num_threads(1)
cfg = ExperimentConfig(
    methods=["icl", "er"],
    seeds=[0],
    device="cpu",
    system1=System1Config(
        vit_config=tiny_vit_config().to_dict(), image_size=16, hidden_dim=48, memory_dim=64, num_heads=4
    ),
    data=DataConfig(dataset="digits", max_train_per_task=20, max_test_per_task=32, pretrain_epochs=0),
    train=TrainConfig(buffer_size=20, n_epochs=1, lr=1e-3, em_steps=1, batch_size=10, progress=False),
)
data = build_stream(cfg.data)
encoder = prepare_encoder(cfg, data, 0, info.device)


class Stop(Exception):
    pass


record = {"world": info.world_size}
for method in cfg.methods:
    oracle = OracleSystem2(1.0)  # right whenever the truth is a candidate: the same numbers however shared
    learner = build_learner(method, cfg, data, encoder, info.device, 0)
    full = run_stream(learner, data, cfg, 0, oracle, checkpoint_dir=ckpt / f"{method}-full")
    params = [p.detach().flatten() for p in learner.parameters() if p.requires_grad]
    record[method] = {
        "params": torch.cat(params).tolist(),
        "class_il": full.class_il,
        "task_il": full.task_il,
        "with_system2": full.final_class_il_with_system2,
        "system2": full.system2,
        "losses": full.losses,
        "checkpoints": sorted(p.name for p in (ckpt / f"{method}-full").iterdir()),
    }
    if method != "icl":
        continue
    interrupted = build_learner(method, cfg, data, encoder, info.device, 0)
    begin = interrupted.begin_task

    def stop_at_3(t, begin=begin):
        if t == 3:
            raise Stop
        begin(t)

    interrupted.begin_task = stop_at_3
    try:
        run_stream(interrupted, data, cfg, 0, checkpoint_dir=ckpt / f"{method}-resumed")
    except Stop:
        pass
    resumed_learner = build_learner(method, cfg, data, encoder, info.device, 0)
    resumed = run_stream(
        resumed_learner, data, cfg, 0, OracleSystem2(1.0), ckpt / f"{method}-resumed", resume=True
    )
    record[method]["resumed_class_il"] = resumed.class_il
    record[method]["resumed_params"] = torch.cat(
        [p.detach().flatten() for p in resumed_learner.parameters() if p.requires_grad]
    ).tolist()
if dist.is_main_process():
    out.write_text(json.dumps(record))
dist.cleanup()
