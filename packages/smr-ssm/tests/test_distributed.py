"""Scale-out: the training loop under torchrun (2 gloo processes) trains what one process trains with the
same global batch and seed, writes its checkpoints once, resumes, and its sharded evaluation gives the
one-process numbers."""

import runpy
from pathlib import Path

import pytest
import torch

from papers_shared.checkpoints import load_checkpoint
from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_train_evaluate_and_resume_like_one(tmp_path):
    torchrun([SCRIPT, tmp_path / "two"], nproc=2, timeout=300)
    runpy.run_path(str(SCRIPT), run_name="ddp_train")["main"](tmp_path / "one")
    two, one = (load_checkpoint(tmp_path / d / "result.pt") for d in ("two", "one"))
    for name, p in one["params"].items():
        assert torch.allclose(p, two["params"][name], atol=1e-5, rtol=1e-4), name
    assert not torch.equal(one["params"]["model.layers.0.mixer.C"], _initial_c())  # it trained
    assert torch.allclose(one["loss"], two["loss"], rtol=1e-4)  # losses averaged over the processes
    assert one["tokens"] == two["tokens"] and torch.allclose(one["ppl"], two["ppl"], rtol=1e-5)
    assert sorted(one["batch"].tolist()) == sorted(two["batch"].tolist())  # the shares make up one batch
    for d in ("one", "two"):  # checkpoints of steps 2 and 4 (written once), the final weights
        names = sorted(p.name for p in (tmp_path / d / "checkpoints").glob("ckpt-*.pt"))
        assert names == ["ckpt-000000002.pt", "ckpt-000000004.pt"]
        assert (tmp_path / d / "final" / "model.safetensors").is_file()
        assert (
            len((tmp_path / d / "metrics.jsonl").read_text().splitlines()) == 4
        )  # 2 + 2 records, no duplicates


def _initial_c():
    return runpy.run_path(str(SCRIPT), run_name="ddp_train")["model"]().state_dict()["model.layers.0.mixer.C"]
