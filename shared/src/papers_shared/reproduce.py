"""``reproduce``: run the quick reproductions registered by the installed packages.

Packages register a callable under the entry-point group ``papers_shared.reproduce``::

    [project.entry-points."papers_shared.reproduce"]
    my-package = "my_package.quick:quick_reproduction"

The callable has the signature ``quick_reproduction(out_dir: Path, quick: bool = True) -> QuickResult``;
it writes its PNG plots into ``out_dir`` and returns the numbers. The runner fixes what makes numbers
move between two runs on one machine (thread count, deterministic algorithms, the global seeds), times
the run, records the environment (library versions, CPU model, threads), writes ``<out>/<package>.json``
and a combined ``<out>/report.md``. Every package's ``<cli> quick`` goes through the same runner.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from papers_shared.results import (
    QuickResult,
    environment_info,
    format_claims,
    load_result,
    write_report,
    write_result,
)

GROUP = "papers_shared.reproduce"
DEFAULT_OUT = Path("results/quick")
DEFAULT_THREADS = 2

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_THREADS",
    "GROUP",
    "deterministic_run",
    "discover",
    "main",
    "run_one",
    "run_packages",
]


def discover() -> dict[str, EntryPoint]:
    """Installed quick reproductions by package name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@contextlib.contextmanager
def deterministic_run(threads: int = DEFAULT_THREADS, seed: int = 0) -> Iterator[None]:
    """Make a run repeatable on one machine: fixed intra-op threads, deterministic kernels, seeded RNGs.

    The thread count is fixed (not the machine's core count) because reductions split across a different
    number of threads round differently; quick runs are small, so two threads cost little. The previous
    thread count and determinism flag are restored afterwards.
    """
    import torch

    from papers_shared.device import seed_everything

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    seed_everything(seed, deterministic=True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before_warn)


def run_one(ep: EntryPoint, out_dir: Path, quick: bool = True, threads: int = DEFAULT_THREADS) -> QuickResult:
    """Run one registered quick reproduction under :func:`deterministic_run` and fill in its record."""
    import torch

    fn = ep.load()
    with deterministic_run(threads):
        t0 = time.perf_counter()
        result = fn(out_dir, quick=quick)
        environment = environment_info()
    if not isinstance(result, QuickResult):
        raise TypeError(f"{ep.name}: quick reproduction returned {type(result).__name__}, not QuickResult")
    if result.runtime_s is None:
        result.runtime_s = round(time.perf_counter() - t0, 2)
    if not result.device:
        result.device = "cuda" if torch.cuda.is_available() else "cpu"
    result.environment = {**environment, **result.environment}
    return result


def run_packages(
    names: Sequence[str],
    out: Path,
    *,
    full: bool = False,
    threads: int = DEFAULT_THREADS,
    catch: bool = True,
) -> int:
    """Run the named quick reproductions into ``out``, print each one's claims, write ``report.md``.

    With ``catch`` a failing package is reported and the others still run (exit status 1); without it the
    exception propagates (a package CLI's ``quick``, where a failure is a bug with its traceback).
    """
    available = discover()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise LookupError(f"no quick reproduction registered for {unknown}; installed: {sorted(available)}")
    out.mkdir(parents=True, exist_ok=True)
    results, failures = [], {}
    for name in names:
        print(f"[reproduce] {name} ...", flush=True)
        try:
            res = run_one(available[name], out, quick=not full, threads=threads)
        except Exception:
            if not catch:
                raise
            failures[name] = traceback.format_exc()
            print(f"[reproduce] {name} FAILED\n{failures[name]}", file=sys.stderr, flush=True)
            continue
        path = write_result(res, out)
        held = sum(bool(c.holds) for c in res.claims)
        if res.claims:
            print(format_claims(res), flush=True)
        print(
            f"[reproduce] {name}: {held}/{len(res.claims)} claims hold, {res.runtime_s:.1f}s -> {path}",
            flush=True,
        )
        results.append(load_result(path))
    report = write_report(results, out, failures)
    print(f"[reproduce] report: {report}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    from papers_shared.cli import check_output_dir, error_boundary

    parser = argparse.ArgumentParser(
        prog="reproduce", description="Run the packages' quick reproductions on bundled offline data."
    )
    parser.add_argument("packages", nargs="*", help="package names (default: every installed package)")
    parser.add_argument("--quick", action="store_true", default=True, help="quick mode (the default)")
    parser.add_argument("--full", action="store_true", help="longer runs (more seeds/steps) where supported")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch intra-op threads, fixed so that numbers repeat (default {DEFAULT_THREADS})",
    )
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

    def work() -> int:
        check_output_dir(args.out, flag="--out")
        return run_packages(names, args.out, full=args.full, threads=args.threads)

    return error_boundary("reproduce", work, real_argv=argv is None)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
