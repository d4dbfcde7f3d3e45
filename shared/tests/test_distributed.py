"""papers_shared.distributed: 2 gloo processes under torchrun train exactly what one process trains."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from papers_shared import distributed as pd
from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_linear.py"


def test_single_process_helpers_are_no_ops():
    assert (pd.rank(), pd.world_size(), pd.is_main_process(), pd.launched()) == (0, 1, True, False)
    m = torch.nn.Linear(2, 1)
    assert pd.wrap_ddp(m) is m and pd.unwrap(m) is m
    assert pd.per_rank_batch_size(8) == 8
    assert pd.shard([1, 2, 3]) == [1, 2, 3] and pd.gather_rows([1, 4, 9]) == [1, 4, 9]
    assert pd.reduce_mean(torch.tensor([1.0, 3.0])) == 2.0
    assert pd.reduce_dict({"b": 1, "a": 2}) == {"a": 2.0, "b": 1.0}
    assert list(pd.make_sampler(list(range(5)), shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.distributed
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(SCRIPT), str(one), "8"], check=True, timeout=300)
    torchrun([SCRIPT, two, "8"], nproc=2, timeout=300)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert torch.allclose(torch.tensor(a["w"]), torch.tensor(b["w"]), atol=1e-5)
    assert torch.allclose(torch.tensor(a["losses"]), torch.tensor(b["losses"]), atol=1e-5)
    assert a["rows"] == b["rows"] == [i * i for i in range(11)]  # sharded work comes back in order
    assert b["metrics"] == {"a": 0.5, "b": 1.0} and a["metrics"] == {"a": 0.0, "b": 1.0}
