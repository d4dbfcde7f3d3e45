"""Shared fixtures: a word-level tokenizer built in memory, tiny GPT2Config models, toy preference data."""

from __future__ import annotations

import logging
import warnings

import datasets
import pytest
import torch
from peft import LoraConfig

from ofs_dpo.config import OFSDPOConfig
from ofs_dpo.data import tiny_gpt2, toy_domains, toy_tokenizer
from ofs_dpo.trainer import OFSDPOTrainer

datasets.disable_progress_bars()
logging.getLogger("transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Tiny models run fastest single-threaded on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    return toy_tokenizer(40)


@pytest.fixture(scope="session")
def domains():
    return toy_domains(n_train=32, n_eval=16, seed=0)


def lora_config(r: int = 4) -> LoraConfig:
    return LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["c_attn"], task_type="CAUSAL_LM"
    )


def small_args(tmp_path, **overrides) -> OFSDPOConfig:
    kw = dict(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-2,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        warmup_steps=0,
    )
    kw.update(overrides)
    return OFSDPOConfig(**kw)


@torch.no_grad()
def randomize_adapter(model, adapter: str, seed: int, scale: float = 0.3) -> None:
    """Give an adapter non-zero ``lora_B`` so that margins are not all zero."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if f".{adapter}." in name and "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def make_trainer(tmp_path, tok, domains):
    def factory(train=None, eval_dataset=None, model_seed: int = 0, r: int = 4, **overrides) -> OFSDPOTrainer:
        args = small_args(tmp_path, **overrides)
        return OFSDPOTrainer(
            tiny_gpt2(len(tok), seed=model_seed),
            args=args,
            train_dataset=train if train is not None else domains["toy_a"]["train"],
            eval_dataset=eval_dataset,
            processing_class=tok,
            peft_config=lora_config(r),
        )

    return factory


def first_batch(trainer) -> dict:
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


@pytest.fixture(scope="session")
def h():
    """Helper functions for the tests (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        first_batch=first_batch,
        lora_config=lora_config,
        randomize_adapter=randomize_adapter,
        small_args=small_args,
    )
