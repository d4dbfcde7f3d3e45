"""Data-parallel training and sharded evaluation: 2 gloo processes against one process (CPU)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from papers_shared.checkpoints import load_checkpoint
from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}/")
        elif isinstance(v, torch.Tensor):
            out[prefix + k] = v
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_match_one_and_resume(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # the single-process reference (train task 0, stop, resume, finish), in this process
    spec = importlib.util.spec_from_file_location("ddp_run", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(str(one))
    ref_ckpt = one / "run" / "sr_cis" / "ckpt" / "ckpt-000000001.pt"
    torchrun([SCRIPT, two, ref_ckpt], nproc=2, timeout=300)
    a = load_checkpoint(ref_ckpt)
    b = load_checkpoint(two / "run" / "sr_cis" / "ckpt" / "ckpt-000000001.pt")
    # the 2-process run resumed from its task-0 checkpoint and ends with the same memory
    assert b["task"] == 1 and len(b["rows"]) == 2 and b["system"]["adapters"].keys() == {"ltm_1"}
    ta, tb = _flat(a["system"]), _flat(b["system"])
    assert ta.keys() == tb.keys() and any("lora_B" in k for k in ta)
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-4, rtol=1e-3), k
    assert any(float(v.abs().max()) > 0 for k, v in tb.items() if "lora_B" in k)  # the LoRA did train
    # rank 0 wrote the results; the sharded evaluation of one memory equals the single-process table
    res = json.loads((two / "run" / "results.json").read_text())
    assert res["sr_cis"]["tasks_done"] == 2
    ev = json.loads((two / "eval.json").read_text())
    assert ev["world_size"] == 2
    ref = a["rows"][-1]
    for k in ("acc", "acc_fast", "route_frac", "region_acc", "fix_rate", "n"):
        assert ev[k] == pytest.approx(ref[k], abs=1e-9), k
