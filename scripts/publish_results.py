"""Publish a quick-reproduction run into docs/: per-package JSON and figures, and docs/results.md.

    uv run reproduce --out results/quick
    uv run python scripts/publish_results.py results/quick --wall "9 min 40 s" --note "..."

Copies ``<run>/<package>.json`` and the figures it lists to ``docs/figures/<package>/`` and writes
``docs/results.md`` from the run's ``report.md`` (figure links rewritten to the copies), under a header
that says when, where and how the numbers were measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the folder `uv run reproduce --out` wrote")
    ap.add_argument("--wall", required=True, help="wall time of the whole command, as measured")
    ap.add_argument("--machine", default="2 CPU cores (x86-64), no GPU, 24 GiB, nothing else running")
    ap.add_argument("--note", action="append", default=[], help="a paragraph added under the header")
    args = ap.parse_args()
    report = (args.run / "report.md").read_text()
    for path in sorted(args.run.glob("*.json")):
        data = json.loads(path.read_text())
        pkg = data["package"]
        dest = ROOT / "docs" / "figures" / pkg
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / path.name)
        for plot in data.get("plots", []):
            shutil.copy2(args.run / plot, dest / plot)
            report = report.replace(f"![{plot}]({plot})", f"![{plot}](figures/{pkg}/{plot})")
    body = report.split("\n", 1)[1]  # drop the run's own title
    header = [
        "# Results: quick reproductions",
        "",
        f"Produced by `uv run reproduce --out results/quick` (the README's main command) on "
        f"{dt.date.today().isoformat()}, on the development machine: {args.machine}; the whole command took "
        f"{args.wall} wall. Every number below is measured in that run; each claim's `holds` is computed from "
        "the numbers, and claims were stated before measuring. Claims that fail are discussed in each "
        "package's README. The per-package JSON files and the figures are under `docs/figures/<package>/`.",
        "",
        *[p + "\n" for p in args.note],
    ]
    (ROOT / "docs" / "results.md").write_text("\n".join(header) + body)
    print(f"wrote {ROOT / 'docs' / 'results.md'}")


if __name__ == "__main__":
    main()
