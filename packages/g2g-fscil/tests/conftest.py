from pathlib import Path

import pytest
import torch

from papers_shared.testing import CodeRunningPickle

torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    from g2g_fscil.config import G2GConfig

    return G2GConfig(
        backbone="tiny",
        in_channels=1,
        feat_dim=16,
        local_pool=2,
        meta_iters=3,
        meta_ways=3,
        meta_shots=2,
        meta_queries=2,
        retrain_iter=2,
        lr_step=10,
    )


@pytest.fixture(scope="session")
def digits():
    from g2g_fscil.data import digits_data

    return digits_data(base=6, ways=2, shots=5, seed=0)


@pytest.fixture
def crafted_pickle(tmp_path):
    """``write(path) -> target``: a torch file at ``path`` whose unpickling would create ``target``."""

    def write(path: Path) -> Path:
        target = tmp_path / f"pwned-{Path(path).name}"
        torch.save({"w": torch.zeros(1), "x": CodeRunningPickle(target)}, path)
        return target

    return write
