"""Spec §8 smoke experiment: the digits quick reproduction, printed as a table.

uv run --no-sync python packages/g2g-fscil/scripts/smoke_digits.py [--out runs/g2g-fscil/smoke]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from g2g_fscil.quick import quick_reproduction
from papers_shared.results import write_result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/g2g-fscil/smoke")
    args = ap.parse_args()
    res = quick_reproduction(Path(args.out))
    for name, s in res.metrics["summary"].items():
        print(f"{name:12s} avg {s['avg']:6.2f}  PD {s['pd']:6.2f}  collapse {s['collapse']:.3f}")
    for c in res.claims:
        print(("HOLDS " if c.holds else "FAILS ") + c.claim)
    print(write_result(res, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
