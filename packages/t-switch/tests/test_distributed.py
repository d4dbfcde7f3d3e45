"""Issue 21: the merging table sharded over 2 gloo processes equals the single-process table."""

import importlib.util
import json
from pathlib import Path

import pytest

from papers_shared.results import to_jsonable
from papers_shared.testing import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "shard_table.py"


def _one_process_table() -> dict:
    spec = importlib.util.spec_from_file_location("shard_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return json.loads(json.dumps(to_jsonable(mod.table())))


def test_table_script_covers_every_stage():
    one = _one_process_table()
    assert {"pretrained", "individual", "task_arithmetic", "ties", "emr", "t_switch", "t_switch_sparse",
            "auto_switch", "storage", "pulse"} <= set(one)  # fmt: skip
    assert one["task_arithmetic"]["alpha"] in (0.3, 1.0)
    assert [row["ratio"] for row in one["pulse"]["a"]] == [0.0, 0.5]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_table_equals_one_process(tmp_path):
    out = tmp_path / "table.json"
    torchrun([SCRIPT, out], nproc=2, timeout=300)
    assert json.loads(out.read_text()) == _one_process_table()
