import pytest
import torch
from torch.utils.data import TensorDataset

torch.set_num_threads(1)

NAMES = {i: n for i, n in enumerate("zero one two three four five six seven eight nine".split())}


@pytest.fixture(scope="session")
def digits():
    from papers_shared.data import load_digits_tensors

    return load_digits_tensors(16, 3)


def task_ds(digits, classes, n=None):
    x, y = digits
    m = torch.isin(y, torch.tensor(classes))
    idx = torch.nonzero(m).flatten()
    if n is not None:
        idx = idx[:n]
    return TensorDataset(x[idx], y[idx])


@pytest.fixture
def tiny_cfg():
    from sr_cis.config import LoraSpec, SmallModelConfig, SRCISConfig

    cfg = SRCISConfig()
    cfg.small = SmallModelConfig(model_id=None, lora=LoraSpec(r=4, alpha=4))
    cfg.stm.epochs = 1
    cfg.stm.batch_size = 64
    cfg.text.describe_mode = "class_name_only"
    cfg.text.n_desc = 4
    cfg.restructure.epochs = 1
    cfg.generator.kind = "gaussian"
    cfg.generator.gaussian_source = "task"
    cfg.progress = False
    cfg.device = "cpu"
    return cfg


@pytest.fixture
def small(tiny_cfg):
    from sr_cis.small_model import build_small_model

    torch.manual_seed(0)
    return build_small_model(tiny_cfg.small)


@pytest.fixture
def make_task(digits):
    return lambda classes, n=None: task_ds(digits, classes, n)


@pytest.fixture
def names():
    return dict(NAMES)
