import pytest
import torch

from icl_vmf.ckt_mha import CKTMHA
from icl_vmf.config import DataConfig, ExperimentConfig, System1Config, System2Config, TrainConfig
from icl_vmf.encoders import build_vit, tiny_vit_config
from icl_vmf.memory import VMFValueMemory
from icl_vmf.system1 import System1


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # the tiny test models are a few dozen units wide: thread hand-offs cost more than the arithmetic
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_system1(num_classes: int = 6, num_tasks: int = 3, seed: int = 0) -> System1:
    """Tiny System1: ViT (16 px, patch 4 -> L = 17, D = 32), d_class = 48, d_task = 16."""
    torch.manual_seed(seed)
    enc = build_vit(None, config=tiny_vit_config(), image_size=16, seed=seed)
    ckt = CKTMHA(32, 48, 16, num_heads=4)
    mem = VMFValueMemory(num_classes, num_tasks, num_classes // num_tasks, 48, 16)
    return System1(enc, ckt, mem)


@pytest.fixture
def system1() -> System1:
    return make_system1()


@pytest.fixture(name="make_system1")
def _make_system1_fixture():
    return make_system1


def tiny_config(**over) -> ExperimentConfig:
    """Digits stream, tiny ViT, small caps so a whole run takes seconds."""
    cfg = ExperimentConfig(
        methods=over.pop("methods", ["icl"]),
        seeds=[0],
        system1=System1Config(
            vit_config=tiny_vit_config().to_dict(), image_size=16, hidden_dim=48, memory_dim=64, num_heads=4
        ),
        data=DataConfig(dataset="digits", max_train_per_task=30, max_test_per_task=40, pretrain_epochs=1),
        train=TrainConfig(buffer_size=20, n_epochs=1, lr=1e-3, em_steps=2, progress=False),
        system2=System2Config(enabled=True, backend="oracle", k=2),
        checkpoint=False,
    )
    for k, v in over.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


@pytest.fixture(name="tiny_config")
def _tiny_config_fixture():
    return tiny_config
