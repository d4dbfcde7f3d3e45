"""The stream loop under torchrun (2 gloo processes) trains what one process trains (issue 21).

The tiny ViT has no BatchNorm and is frozen; the second views, the replay draws and the buffer are
identical on every process (each holds the global batch), so the only difference is the summation order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_stream.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_and_evaluate_what_one_process_does(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "one.json"), str(tmp_path / "c1")],
        check=True, timeout=600, env={**os.environ, **env},
    )  # fmt: skip
    torchrun([SCRIPT, tmp_path / "two.json", tmp_path / "c2"], nproc=2, timeout=600)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2)
    for method in ("icl", "er"):
        a, b = one[method], two[method]
        torch.testing.assert_close(torch.tensor(b["params"]), torch.tensor(a["params"]), atol=1e-4, rtol=1e-4)
        assert b["class_il"] == a["class_il"] and b["task_il"] == a["task_il"]  # sharded evaluation
        assert b["with_system2"] == a["with_system2"] and b["system2"]["hard"] == a["system2"]["hard"]
        assert b["losses"] == pytest.approx(a["losses"], abs=1e-4)
        assert b["checkpoints"] == ["ckpt-000000004.pt", "latest.json"]  # rank 0 wrote one checkpoint
    # ICL interrupted after task 2 and resumed by both processes from rank 0's checkpoint
    b = two["icl"]
    assert b["resumed_class_il"] == b["class_il"]
    torch.testing.assert_close(
        torch.tensor(b["resumed_params"]), torch.tensor(b["params"]), atol=1e-5, rtol=1e-5
    )
