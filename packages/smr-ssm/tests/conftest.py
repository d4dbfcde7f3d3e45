from pathlib import Path

import pytest
import torch

from papers_shared.testing import CodeRunningPickle

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


Evil = CodeRunningPickle  # a crafted pickle that creates a file when loaded


@pytest.fixture
def evil_file(tmp_path):
    """``make(path)`` writes a crafted pickle to ``path``; returns the file it would create."""
    target = tmp_path / "pwned"

    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": torch.zeros(1), "evil": Evil(target)}, path)
        return target

    return make
