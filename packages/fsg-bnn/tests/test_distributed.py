"""Training under torchrun: 2 gloo processes take the same steps as one process with the same global batch
(the captured dloss/dW^ and the meta nets' gradients averaged over the processes, fsg_bnn.distributed)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fsg.py"


def _one_process(out: Path, work: Path) -> None:
    """The script's one-process run, in this process (saves a second interpreter's imports)."""
    spec = importlib.util.spec_from_file_location("fsg_bnn_ddp_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(out, work)


def _close(a, b):
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_process_checkpoint_resume_and_cli(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _one_process(one, tmp_path / "w1")
    torchrun([SCRIPT, two, tmp_path / "w2"], nproc=2, timeout=600)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    for method in ("fsg", "multifc"):
        ra, rb = a[method], b[method]
        assert ra["steps"] == rb["steps"] == 6
        assert rb["spread"] == 0.0  # every process holds the same BNN, meta nets and HGS
        # rank 0 wrote the checkpoints the fresh trainer resumed from
        assert sorted(p.name for p in (tmp_path / "w2" / method).glob("ckpt-*.pt")) == [
            "ckpt-000000001.pt",
            "ckpt-000000002.pt",
        ]
        assert ra["state"].keys() == rb["state"].keys()
        if method == "fsg":
            assert any(k.startswith("hgs.") for k in ra["state"])
            assert any(k.startswith("meta.slow.") for k in ra["state"])
        for k in ra["state"]:
            _close(ra["state"][k], rb["state"][k])
        assert len(ra["hist"]) == len(rb["hist"]) == 2
        for ha, hb in zip(ra["hist"], rb["hist"], strict=True):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert hb[key] == pytest.approx(ha[key], rel=1e-4, abs=1e-5), key
    # fsg-bnn train under torchrun: one result.json and model.safetensors (rank 0), equal to one process's
    ca, cb = a["cli"], b["cli"]
    assert ca["code"] == cb["code"] == 0
    for key in ("best_test_acc", "final_train_loss"):
        assert cb["result"][key] == pytest.approx(ca["result"][key], rel=1e-4, abs=1e-5)
    assert ca["weights"].keys() == cb["weights"].keys()
    for k in ca["weights"]:
        _close(ca["weights"][k], cb["weights"][k])
