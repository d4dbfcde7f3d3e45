import json
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from papers_shared import reproduce
from papers_shared.results import (
    Claim,
    QuickResult,
    bar_plot,
    line_plot,
    save_and_report,
    write_report,
    write_result,
)


def test_claim_compare():
    assert Claim.compare("a beats b", "a", 0.8, "b", 0.7).holds
    assert not Claim.compare("a beats b", "a", 0.6, "b", 0.7).holds
    assert Claim.compare("within 1 point", "a", 0.695, "b", 0.70, op=">=", margin=-0.01).holds
    assert Claim.compare("lower", "a", 0.1, "b", 0.2, op="<").holds
    assert not Claim.compare("nan never holds", "a", float("nan"), "b", 0.0).holds
    with pytest.raises(ValueError):
        Claim.compare("x", "a", 1, "b", 1, op="!=")


def test_write_result_and_report(tmp_path):
    r = QuickResult(
        "pkg",
        "cmd",
        "digits",
        [0, 1],
        {"acc": 0.5, "nan": float("nan")},
        [Claim.compare("c", "a", 1.0, "b", 0.5)],
        plots=["p.png"],
    )
    path = write_result(r, tmp_path)
    d = json.loads(path.read_text())
    assert d["claims"][0]["holds"] is True and d["metrics"]["nan"] is None
    rep = write_report([d], tmp_path, failures={"other": "Traceback\nValueError: boom"})
    text = rep.read_text()
    assert "| pkg | digits | 2 |" in text and "1/1" in text and "FAILED" in text


def test_plots(tmp_path):
    p = line_plot({"a": [1, 2, 3]}, tmp_path / "l.png", "x", "y", std={"a": [0.1, 0.1, 0.1]})
    q = bar_plot({"a": (1.0, 0.1), "b": 2.0}, tmp_path / "b.png", "y")
    g = bar_plot({}, tmp_path / "g.png", "y", groups={"g1": {"a": 1.0, "b": 2.0}, "g2": {"a": 1.5, "b": 0.5}})
    for f in (p, q, g):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_runs_dummy_entry_point(tmp_path, monkeypatch):
    mod = tmp_path / "dummy_quick_pkg.py"
    mod.write_text(
        textwrap.dedent(
            """
        from papers_shared.results import Claim, QuickResult

        def quick(out_dir, quick=True):
            return QuickResult("dummy", "reproduce dummy", "synthetic", [0], {"x": 2.0},
                               [Claim.compare("x > 1", "x", 2.0, "one", 1.0, op=">")])

        def broken(out_dir, quick=True):
            raise RuntimeError("broken quick run")
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = {
        "dummy": EntryPoint("dummy", "dummy_quick_pkg:quick", reproduce.GROUP),
        "broken": EntryPoint("broken", "dummy_quick_pkg:broken", reproduce.GROUP),
    }
    monkeypatch.setattr(reproduce, "discover", lambda: eps)
    out = tmp_path / "out"
    assert reproduce.main(["dummy", "--out", str(out)]) == 0
    d = json.loads((out / "dummy.json").read_text())
    assert d["claims"][0]["holds"] and d["runtime_s"] >= 0 and d["device"] == "cpu"
    assert "dummy" in (out / "report.md").read_text()
    assert reproduce.main(["dummy", "broken", "--out", str(out)]) == 1
    with pytest.raises(SystemExit):
        reproduce.main(["nonexistent", "--out", str(out)])
    sys.modules.pop("dummy_quick_pkg", None)


def test_save_and_report_counts_held_claims(tmp_path, capsys):
    claims = [Claim.compare("up", "a", 2.0, "b", 1.0), Claim.compare("down", "a", 0.5, "b", 1.0)]
    r = QuickResult("pkg", "cmd", "digits", [0], {"acc": 0.5}, claims)
    path = save_and_report(r, tmp_path)
    assert path == tmp_path / "pkg.json"
    assert [c["holds"] for c in json.loads(path.read_text())["claims"]] == [True, False]
    assert capsys.readouterr().out.strip().splitlines() == [
        "[holds] up: a 2 >= b 1",
        "  [FAILS] down: a 0.5 >= b 1",
        f"1/2 claims hold -> {path}",
    ]


def test_paired_claim_records_per_seed_differences_and_min_wins(tmp_path):
    c = Claim.paired_compare(
        "a beats b", "a", [0.9, 0.8, 0.7], "b", [0.8, 0.85, 0.6], op=">", seeds=[0, 1, 2]
    )
    assert c.holds and c.method_value == pytest.approx(0.8) and c.baseline_value == pytest.approx(0.75)
    assert c.paired["diff"] == pytest.approx([0.1, -0.05, 0.1]) and c.paired["wins"] == 2
    assert c.paired["diff_std"] == pytest.approx(0.0866025, rel=1e-5)
    assert c.paired["diff_sem"] == pytest.approx(0.0866025 / 3**0.5, rel=1e-5)
    strict = Claim.paired_compare(
        "a beats b", "a", [0.9, 0.8, 0.7], "b", [0.8, 0.85, 0.6], op=">", min_wins=3
    )
    assert not strict.holds  # the mean moves, but one seed of three disagrees
    with pytest.raises(ValueError, match="equal"):
        Claim.paired_compare("x", "a", [1.0], "b", [1.0, 2.0])
    text = write_report(
        [QuickResult("p", "c", "d", [0, 1, 2], {}, [c]).to_dict()], Path(".").resolve() / "x", {}
    )
    assert "0.05 +- 0.0866 (2/3)" in text.read_text()
    text.unlink()
