"""Run under ``torchrun --nproc-per-node 2`` by ``tests/test_distributed.py`` (or alone: one process).

Stage 2 on a digits slice: 3 steps with a checkpoint, then a fresh trainer resumes to 6 steps; the
final generator parameters and losses go to ``<out>/stage2-<world>proc.safetensors`` / ``.json``. Then the
sharded evaluation table (3 targets: an uneven split) of that generator (``<out>/eval-<world>proc.json``) and two DDP steps of TTP.
The test runs the same functions in one process and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from esma import EasySampleBank, EsmaGenerator, EsmaTrainer
from esma.baselines.ttp import TTPGenerator, TTPTrainer
from esma.config import EsmaExperimentConfig
from esma.data import digits_split
from esma.experiment import run_eval
from esma.generator import save_generator
from papers_shared import distributed as dist
from papers_shared.attacks import tiny_cnn
from papers_shared.checkpoints import save_safetensors
from papers_shared.cli import resolve_config
from papers_shared.config import load_config

GLOBAL_BATCH = 8


def parts():
    """Source model, bank, dataset and a generator factory - identical in every process."""
    x, y = digits_split(8)["train"]
    source = tiny_cnn(10, 3, width=8, seed=0).eval()
    bank = EasySampleBank(
        torch.randn(10, 10, generator=torch.Generator().manual_seed(1)) * 3, list(range(10))
    )

    def generator() -> EsmaGenerator:
        torch.manual_seed(0)
        return EsmaGenerator(10, ch=16, ch_mult=(1, 2))

    return source, bank, TensorDataset(x[:48], y[:48]), generator


def stage2(ckpt_dir: Path) -> EsmaTrainer:
    source, bank, data, generator = parts()

    def trainer() -> EsmaTrainer:
        return EsmaTrainer(generator(), source, bank, eps_train=0.2, lr=1e-3, seed=3)

    first = trainer()
    first.fit(data, epochs=3, batch_size=GLOBAL_BATCH, ckpt_dir=ckpt_dir, max_steps=3, progress=False)
    resumed = trainer()
    resumed.fit(
        data, epochs=3, batch_size=GLOBAL_BATCH, ckpt_dir=ckpt_dir, resume=True, max_steps=6, progress=False
    )
    return resumed


def eval_config(out: Path) -> EsmaExperimentConfig:
    overrides = [f"out_dir={out}", "digits_size=8", "digits_source_epochs=1", "eval.batch_size=512"]
    overrides += ["class_ids=[0,1,2]", "generator.ch_mult=[1,2]"]
    return load_config(EsmaExperimentConfig, resolve_config("esma", "digits_tiny"), overrides)


def main(out: Path) -> None:
    dist.init_distributed("cpu")
    ws = dist.world_size()
    trainer = stage2(out / f"ckpt-{ws}proc")
    if dist.is_main_process():
        save_safetensors(trainer.generator.state_dict(), out / f"stage2-{ws}proc.safetensors")
        (out / f"stage2-{ws}proc.json").write_text(
            json.dumps({"loss": trainer.history, "step": trainer.step})
        )
        torch.manual_seed(5)
        save_generator(out / "gen.safetensors", EsmaGenerator(3, ch=16, ch_mult=(1, 2)), [0, 1, 2])
    dist.barrier()
    rows = run_eval(eval_config(out), out / "gen.safetensors", progress=False)
    if dist.is_main_process():
        (out / f"eval-{ws}proc.json").write_text(json.dumps(rows))
    source, _, data, _ = parts()
    ttp = TTPTrainer(TTPGenerator(ngf=8, n_blocks=1), source, eps_train=0.2, lr=1e-3, seed=0)
    ttp.fit(
        data,
        data,
        epochs=1,
        batch_size=GLOBAL_BATCH,
        max_steps=2,
        progress=False,
        ckpt_dir=out / f"ttp-{ws}proc",
    )
    dist.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
