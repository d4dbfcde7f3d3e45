"""Quick-reproduction results: a JSON record per package, PNG plots and a combined Markdown report.

JSON schema (one file per package, ``<out>/<package>.json``)::

    {"package": str, "command": str, "dataset": str, "seeds": [int], "device": str, "runtime_s": float,
     "metrics": {...}, "claims": [{"claim", "method", "baseline", "method_value", "baseline_value",
     "op", "margin", "holds"}], "plots": [file names], "notes": str,
     "environment": {"torch", "numpy", "python", "platform", "cpu", "threads", "deterministic", "gpu"}}

``holds`` is computed from the measured numbers by :meth:`Claim.compare`, never written by hand.
"""

from __future__ import annotations

import json
import math
import operator
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from papers_shared.checkpoints import atomic_write_text

__all__ = [
    "Claim",
    "QuickResult",
    "bar_plot",
    "environment_info",
    "format_claims",
    "line_plot",
    "load_result",
    "save_and_report",
    "to_jsonable",
    "write_json",
    "write_report",
    "write_result",
]

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass
class Claim:
    """A paper claim checked on measured numbers: ``method_value <op> baseline_value + margin``."""

    claim: str
    method: str
    baseline: str
    method_value: float | None
    baseline_value: float | None
    op: str
    margin: float
    holds: bool
    #: for claims over several seeds (:meth:`paired`): per-seed values and their paired differences
    paired: dict[str, Any] | None = None

    @classmethod
    def paired_compare(
        cls,
        claim: str,
        method: str,
        method_values: Sequence[float],
        baseline: str,
        baseline_values: Sequence[float],
        op: str = ">=",
        margin: float = 0.0,
        min_wins: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> Claim:
        """A claim over seeds: ``mean(method) <op> mean(baseline) + margin`` on paired per-seed runs.

        The record keeps both per-seed lists, the paired differences ``method - baseline``, their mean,
        standard deviation (ddof=1) and standard error, and ``wins`` (seeds where the per-seed comparison
        holds). ``min_wins`` makes the claim also require that many per-seed wins, so that a mean moved by
        one seed, or a tie, does not count as an effect.
        """
        if op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
        mv = [float(v) for v in method_values]
        bv = [float(v) for v in baseline_values]
        if len(mv) != len(bv) or not mv:
            raise ValueError(
                f"paired claim needs equal, non-empty per-seed lists, got {len(mv)} and {len(bv)}"
            )
        if seeds is not None and len(seeds) != len(mv):
            raise ValueError(f"{len(seeds)} seeds for {len(mv)} values")
        diffs = [a - b for a, b in zip(mv, bv)]
        n = len(diffs)
        dmean = sum(diffs) / n
        dstd = math.sqrt(sum((d - dmean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
        wins = sum(bool(_OPS[op](a, b + margin)) for a, b in zip(mv, bv))
        base = cls.compare(claim, method, sum(mv) / n, baseline, sum(bv) / n, op=op, margin=margin)
        base.holds = bool(base.holds and (min_wins is None or wins >= min_wins))
        base.paired = {
            "seeds": list(seeds) if seeds is not None else None,
            "method": mv,
            "baseline": bv,
            "diff": diffs,
            "diff_mean": dmean,
            "diff_std": dstd,
            "diff_sem": dstd / math.sqrt(n) if n > 1 else 0.0,
            "wins": wins,
            "n": n,
            "min_wins": min_wins,
        }
        return base

    @classmethod
    def compare(
        cls,
        claim: str,
        method: str,
        method_value: float,
        baseline: str,
        baseline_value: float,
        op: str = ">=",
        margin: float = 0.0,
    ) -> Claim:
        """Build a claim whose ``holds`` is ``method_value <op> baseline_value + margin``.

        Use a negative margin for tolerances (``G2G >= V2V - 1``: ``op=">=", margin=-1``).
        """
        if op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
        mv, bv = float(method_value), float(baseline_value)
        holds = bool(math.isfinite(mv) and math.isfinite(bv) and _OPS[op](mv, bv + margin))
        return cls(claim, method, baseline, mv, bv, op, float(margin), holds)

    @classmethod
    def check(cls, claim: str, method: str, value: bool, baseline: str = "-") -> Claim:
        """A claim that is a property rather than a comparison (e.g. "all losses finite")."""
        return cls(claim, method, baseline, None, None, "is", 0.0, bool(value))


@dataclass
class QuickResult:
    package: str
    command: str
    dataset: str
    seeds: list[int]
    metrics: dict[str, Any]
    claims: list[Claim]
    device: str = "cpu"
    runtime_s: float | None = None
    plots: list[str] = field(default_factory=list)
    notes: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["claims"] = [asdict(c) for c in self.claims]
        return d


def to_jsonable(x: Any) -> Any:
    """Plain JSON types from tensors, numpy values, paths and nested containers (non-finite floats -> null)."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return to_jsonable(x.item())
    if hasattr(x, "tolist"):
        return to_jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(obj: Any, path: str | Path) -> Path:
    """The one result writer: ``obj`` as indented JSON (see :func:`to_jsonable`), written atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def write_result(result: QuickResult, out_dir: str | Path) -> Path:
    return write_json(result.to_dict(), Path(out_dir) / f"{result.package}.json")


def format_claims(result: QuickResult | Mapping[str, Any]) -> str:
    """One line per claim, ``[holds|FAILS] claim: value op baseline (+ margin)``, as ``reproduce`` prints."""
    claims = result["claims"] if isinstance(result, Mapping) else [asdict(c) for c in result.claims]
    lines = []
    for c in claims:
        tag = "holds" if c["holds"] else "FAILS"
        if c["method_value"] is None:
            lines.append(f"  [{tag}] {c['claim']}")
            continue
        margin = f" {c['margin']:+g}" if c["margin"] else ""
        paired = c.get("paired")
        seeds = ""
        if paired:
            seeds = (
                f" (paired diff {_fmt(paired['diff_mean'])} +- {_fmt(paired['diff_std'])}, "
                f"{paired['wins']}/{paired['n']} seeds)"
            )
        lines.append(
            f"  [{tag}] {c['claim']}: {c['method']} {_fmt(c['method_value'])} {c['op']} "
            f"{c['baseline']} {_fmt(c['baseline_value'])}{margin}{seeds}"
        )
    return "\n".join(lines)


def save_and_report(result: QuickResult, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<package>.json`` and print its claims and ``held/total claims hold -> path``."""
    path = write_result(result, out_dir)
    held = sum(bool(c.holds) for c in result.claims)
    if result.claims:
        print(format_claims(result))
    print(f"{held}/{len(result.claims)} claims hold -> {path}")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict[str, Any]:
    """What the numbers depend on: library versions, CPU model, thread count, determinism flag, GPU."""
    import numpy as np
    import torch

    env = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return env


def load_result(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def line_plot(
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    x: Sequence[float] | None = None,
    std: Mapping[str, Sequence[float]] | None = None,
    logy: bool = False,
) -> Path:
    """One line per series (optional shaded +-std); saved as PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for name, ys in series.items():
        xs = list(x) if x is not None else list(range(len(ys)))
        ax.plot(xs, list(ys), marker="o" if len(ys) <= 20 else None, label=name)
        if std and name in std:
            lo = [a - b for a, b in zip(ys, std[name])]
            hi = [a + b for a, b in zip(ys, std[name])]
            ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_plot(
    values: Mapping[str, float | tuple[float, float]],
    path: str | Path,
    ylabel: str,
    title: str = "",
    groups: Mapping[str, Mapping[str, float | tuple[float, float]]] | None = None,
) -> Path:
    """Bars with optional error bars (``(mean, std)``); ``groups`` draws grouped bars instead."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)

    def split(v):
        return (v[0], v[1]) if isinstance(v, (tuple, list)) else (v, 0.0)

    if groups:
        names = list(groups)
        series = list(next(iter(groups.values())))
        width = 0.8 / max(1, len(series))
        for j, s in enumerate(series):
            ms = [split(groups[g][s]) for g in names]
            ax.bar(
                [i + j * width for i in range(len(names))],
                [m for m, _ in ms],
                width,
                yerr=[e for _, e in ms],
                label=s,
                capsize=2,
            )
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names, fontsize=8)
        ax.legend(fontsize=8)
    else:
        names = list(values)
        ms = [split(values[n]) for n in names]
        ax.bar(names, [m for m, _ in ms], yerr=[e for _, e in ms], capsize=3)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(
    results: Sequence[Mapping[str, Any]], out_dir: str | Path, failures: Mapping[str, str] | None = None
) -> Path:
    """Combined ``report.md``: one summary row per package, then every claim with its numbers."""
    lines = [
        "# Quick reproductions",
        "",
        "| package | dataset | seeds | device | runtime (s) | claims held |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        held = sum(bool(c["holds"]) for c in r["claims"])
        lines.append(
            f"| {r['package']} | {r['dataset']} | {len(r['seeds'])} | {r['device']} | "
            f"{_fmt(r.get('runtime_s'))} | {held}/{len(r['claims'])} |"
        )
    for name, err in (failures or {}).items():
        lines.append(f"| {name} | FAILED | | | | {err.splitlines()[-1] if err else ''} |")
    for r in results:
        lines += ["", f"## {r['package']}", "", f"`{r['command']}`", ""]
        env = r.get("environment") or {}
        if env:
            lines += [
                f"torch {env.get('torch')}, {env.get('cpu')}, {env.get('threads')} threads"
                f"{', GPU ' + env['gpu'] if env.get('gpu') else ''}",
                "",
            ]
        if r["claims"]:
            lines += [
                "| claim | method | value | baseline | value | paired diff (seeds won) | holds |",
                "|---|---|---|---|---|---|---|",
            ]
            for c in r["claims"]:
                p = c.get("paired")
                diff = f"{_fmt(p['diff_mean'])} +- {_fmt(p['diff_std'])} ({p['wins']}/{p['n']})" if p else ""
                lines.append(
                    f"| {c['claim']} | {c['method']} | {_fmt(c['method_value'])} | {c['baseline']} | "
                    f"{_fmt(c['baseline_value'])} | {diff} | {'yes' if c['holds'] else 'NO'} |"
                )
        for p in r.get("plots", []):
            lines.append(f"\n![{p}]({p})")
        if r.get("notes"):
            lines += ["", r["notes"]]
    path = Path(out_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
