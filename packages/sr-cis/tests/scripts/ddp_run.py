"""A short SR-CIS run (2 tasks: STM LoRA training, restructuring fine-tune, sharded evaluation) for the
``distributed`` tests; the same file runs in one process or under ``torchrun --nproc-per-node 2``.

python ddp_run.py OUT              # train task 0, stop, resume, finish (checkpoints in OUT/run)
python ddp_run.py OUT CKPT         # also evaluate the memory in CKPT, rank 0 writes OUT/eval.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.distributed import cleanup, init_distributed, is_main_process
from papers_shared.mllm import ScriptedModel
from papers_shared.results import write_json
from sr_cis.config import ExperimentConfig
from sr_cis.data import eval_subset, load_benchmark
from sr_cis.experiment import build_method, run_experiment
from sr_cis.small_model import build_small_model

# no pre-training (its held-out split has an odd size) and 40 shots per class: every task has 80 images,
# the replay 4 x 4 = 16, so the global batches 32 / 16 split evenly over 2 processes; no BatchNorm in ViT
OVERRIDES = [
    "methods=[sr_cis]",
    "pretrain_epochs=0",
    "data.shots=40",
    "system.stm.epochs=2",
    "system.stm.batch_size=32",
    "system.stm.lr=0.005",
    "system.restructure.batch_size=16",
    "system.restructure.epochs=2",
    "system.generator.gaussian_source=task",
    "system.caoad.warmup=8",
]


def first_candidate() -> ScriptedModel:
    return ScriptedModel(
        lambda image, prompt: "it is " + prompt.split(": ", 1)[1].split(",")[0].split(" or ")[0]
    )


def main(out: str, ckpt: str | None = None) -> None:
    torch.set_num_threads(1)
    cfg = load_config(ExperimentConfig, resolve_config("sr_cis", "digits_smoke"), OVERRIDES)
    run = Path(out) / "run"
    run_experiment(cfg, first_candidate(), out_dir=run, stop_after=1)  # task 0, then stop
    run_experiment(cfg, first_candidate(), out_dir=run, resume=True)  # task 1 from the checkpoint
    if ckpt is not None:
        info = init_distributed("cpu")
        bench = load_benchmark(cfg.data, image_size=cfg.system.small.tiny.image_size)
        system = build_method("sr_cis", cfg.system, build_small_model(cfg.system.small), first_candidate(),
                              bench.class_names, seed=cfg.seed)  # fmt: skip
        system.load(ckpt)
        test = eval_subset(
            ConcatDataset([bench.task_test(s) for s in range(2)]), cfg.max_eval_samples, cfg.seed
        )
        res = system.evaluate(test, {c: s.index for s in bench.split for c in s.classes})
        if is_main_process():
            write_json(res | {"world_size": info.world_size}, Path(out) / "eval.json")
    cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:])
