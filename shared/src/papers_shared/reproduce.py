"""``reproduce``: run the quick reproductions registered by the installed packages.

Packages register a callable under the entry-point group ``papers_shared.reproduce``::

    [project.entry-points."papers_shared.reproduce"]
    my-package = "my_package.quick:quick_reproduction"

The callable has the signature ``quick_reproduction(out_dir: Path, quick: bool = True) -> QuickResult``;
it writes its PNG plots into ``out_dir`` and returns the numbers. The runner times it, fills in the
device and runtime, writes ``<out>/<package>.json`` and a combined ``<out>/report.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from papers_shared.results import QuickResult, load_result, write_report, write_result

GROUP = "papers_shared.reproduce"

__all__ = ["GROUP", "discover", "main", "run_one"]


def discover() -> dict[str, EntryPoint]:
    """Installed quick reproductions by package name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def run_one(ep: EntryPoint, out_dir: Path, quick: bool = True) -> QuickResult:
    import torch

    fn = ep.load()
    t0 = time.perf_counter()
    result = fn(out_dir, quick=quick)
    if not isinstance(result, QuickResult):
        raise TypeError(f"{ep.name}: quick reproduction returned {type(result).__name__}, not QuickResult")
    if result.runtime_s is None:
        result.runtime_s = round(time.perf_counter() - t0, 2)
    if not result.device:
        result.device = "cuda" if torch.cuda.is_available() else "cpu"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reproduce", description="Run the packages' quick reproductions on bundled offline data."
    )
    parser.add_argument("packages", nargs="*", help="package names (default: every installed package)")
    parser.add_argument("--quick", action="store_true", default=True, help="quick mode (the default)")
    parser.add_argument("--full", action="store_true", help="longer runs (more seeds/steps) where supported")
    parser.add_argument("--out", type=Path, default=Path("results/quick"), help="output folder")
    parser.add_argument("--list", action="store_true", help="list the registered packages and exit")
    args = parser.parse_args(argv)

    available = discover()
    if args.list:
        for name in sorted(available):
            print(f"{name}\t{available[name].value}")
        return 0
    names = args.packages or sorted(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"no quick reproduction registered for {unknown}; installed: {sorted(available)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results, failures = [], {}
    for name in names:
        print(f"[reproduce] {name} ...", flush=True)
        try:
            res = run_one(available[name], args.out, quick=not args.full)
        except Exception:
            failures[name] = traceback.format_exc()
            print(f"[reproduce] {name} FAILED\n{failures[name]}", file=sys.stderr, flush=True)
            continue
        path = write_result(res, args.out)
        held = sum(c.holds for c in res.claims)
        print(
            f"[reproduce] {name}: {held}/{len(res.claims)} claims hold, {res.runtime_s:.1f}s -> {path}",
            flush=True,
        )
        results.append(load_result(path))
    report = write_report(results, args.out, failures)
    print(f"[reproduce] report: {report}")
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
