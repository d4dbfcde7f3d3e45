"""Results of the prompt / LoRA PTM-CIL baselines (L2P, DualPrompt, CODA-Prompt, InfLoRA), which are not
re-implemented here: run them with LAMDA-PILOT or the InfLoRA repository and import their table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from papers_shared.errors import InputError

__all__ = ["EXTERNAL_BASELINES", "import_results_table"]

EXTERNAL_BASELINES = ("l2p", "dualprompt", "coda_prompt", "inflora")
_REQUIRED = ("method", "dataset", "final_acc")


def _percent(p: Path, row: int, col: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{p}: row {row}, column {col!r}: {value!r} is not a number") from None
    if not (math.isfinite(v) and 0.0 <= v <= 100.0):
        raise InputError(f"{p}: row {row}, column {col!r}: {v} is not a percentage in [0, 100]")
    return v


def import_results_table(path: str | Path) -> list[dict]:
    """Rows ``{method, dataset, setting, final_acc, avg_acc}`` of a CSV or JSON results table (accuracies in
    percent). Every row is checked column by column; a bad cell raises :class:`InputError` naming the
    file, the row (1 = first data row) and the column."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results table not found: {p}")
    if p.suffix == ".json":
        try:
            rows = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: malformed JSON ({exc})") from None
        if isinstance(rows, dict):
            rows = rows.get("rows", [])
        if not isinstance(rows, list):
            raise InputError(f"{p}: expected a list of rows or {{'rows': [...]}}")
    elif p.suffix == ".csv":
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise InputError(f"{p}: a results table must be .csv or .json, not {p.suffix!r}")
    out = []
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict):
            raise InputError(f"{p}: row {i} is not an object with columns {list(_REQUIRED)}")
        for col in _REQUIRED:
            if r.get(col) in (None, ""):
                raise InputError(f"{p}: row {i} has no {col!r} (columns needed: {list(_REQUIRED)})")
        avg = r.get("avg_acc")
        out.append(
            {
                "method": str(r["method"]),
                "dataset": str(r["dataset"]),
                "setting": str(r.get("setting") or "standard"),
                "final_acc": _percent(p, i, "final_acc", r["final_acc"]),
                "avg_acc": None if avg in (None, "") else _percent(p, i, "avg_acc", avg),
            }
        )
    return out
