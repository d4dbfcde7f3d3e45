"""The transfer table sharded over 2 processes (torchrun, gloo) equals the one-process table."""

import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "shard_table.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_table_equals_one_process_table(tmp_path):
    import importlib.util

    from papers_shared.testing import torchrun

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    torchrun([SCRIPT, two], nproc=2, timeout=300)
    spec = importlib.util.spec_from_file_location("shard_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(str(one))
    a = json.loads((one / "rows.json").read_text())
    b = json.loads((two / "rows.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert len(a["rows"]) == 5 * 4  # 5 attacks x (3 victims + white box)
    assert b["rows"] == a["rows"]
    # rank 0 wrote the CSV, with the same content as the single process
    assert (two / "shard" / "results.csv").read_text() == (one / "shard" / "results.csv").read_text()
