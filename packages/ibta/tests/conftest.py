import pytest
import torch

from papers_shared.attacks import tiny_cnn

torch.set_num_threads(1)


@pytest.fixture
def model():
    return tiny_cnn(10, width=8, seed=0).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    return x, y


@pytest.fixture
def inner_batch():
    """Images in [0.2, 0.8]: an eps of 16/255 never reaches the [0, 1] box."""
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(3, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (3,), generator=g)
    return x, y
