"""Pre-training and meta-training under torchrun: 2 gloo processes take the same steps as one process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_g2g.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_process_checkpoint_and_resume(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(SCRIPT), str(one), str(tmp_path / "c1")], check=True, timeout=600)
    torchrun([SCRIPT, two, tmp_path / "c2"], nproc=2, timeout=600)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    # rank 0 wrote the checkpoints the resumed run read
    assert (tmp_path / "c2" / "meta" / "ckpt-000000002.pt").is_file()
    assert (tmp_path / "c2" / "pre" / "ckpt-000000002.pt").is_file()
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        torch.testing.assert_close(
            torch.tensor(b["params"][k]), torch.tensor(a["params"][k]), atol=1e-5, rtol=1e-4
        )
    for k in ("loss", "bce", "lgp", "ca"):
        assert len(a["hist"][k]) == len(b["hist"][k]) == 4
        torch.testing.assert_close(
            torch.tensor(b["hist"][k]), torch.tensor(a["hist"][k]), atol=1e-5, rtol=1e-4
        )
    # the evaluation table, sharded over the two processes and gathered, equals one process's
    assert b["eval"]["acc"] == pytest.approx(a["eval"]["acc"], abs=1e-9)
    assert b["eval"]["groups"] == pytest.approx(a["eval"]["groups"], abs=1e-9)
