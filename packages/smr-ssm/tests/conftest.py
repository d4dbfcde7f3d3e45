import pytest
import torch

torch.set_num_threads(1)  # shared 2-core machines: one intra-op thread per test process


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def f64():
    """Build modules in float64 inside the test (equality checks are asserted in float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(old)
