"""Shared test configuration: keep torch single-threaded (tiny tensors, 2-core CI machines)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
