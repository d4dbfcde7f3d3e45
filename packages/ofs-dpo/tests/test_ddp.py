"""DDP (2 CPU processes, gloo) gives the same adapters as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from papers_shared.checkpoints import load_safetensors
from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_equivalence.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_equals_single_process(tmp_path):
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    subprocess.run([sys.executable, str(SCRIPT), single, "4"], check=True, env=ENV, timeout=600)
    torchrun([SCRIPT, ddp, "2"], nproc=2)
    (a, _), (b, _) = load_safetensors(single + ".safetensors"), load_safetensors(ddp + ".safetensors")
    meta_a, meta_b = (
        json.loads(Path(single + ".json").read_text()),
        json.loads(Path(ddp + ".json").read_text()),
    )
    assert meta_a["world"] == 1 and meta_b["world"] == 2
    assert set(a) == set(b) and any(k.startswith("slow/") for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert [h["winner"] for h in meta_a["history"]] == [h["winner"] for h in meta_b["history"]]
