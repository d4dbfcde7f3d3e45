"""Switch files on safetensors and the storage report.

File layout (one ``.safetensors`` file; ``theta_0`` stored once, switches per task)::

    pretrained/<name>              theta_0 tensors (optional, stored once)
    switch/<task>/<name>/bits      uint8 payload of the packed ternary S (:mod:`t_switch.packing` format)
    switch/<task>/<name>/seek      int64 seek table (interleaved layout only)
    scale/<task>                   float32 [T]: lambda of each switched tensor, in header order
    passthrough/<task>/<name>      0-dim task-vector entries in full precision
    extra/<task>/<name>            per-task full-precision tensors (e.g. heads), never merged

plus a JSON header in the safetensors metadata (``t_switch``) with the format version, group size,
layout, the task order and, per tensor, shape / bit count / non-zero groups / nnz. Saving and loading
are lossless: ``load_switches(save_switches(...))`` returns equal switches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from papers_shared.checkpoints import load_safetensors, save_safetensors
from papers_shared.errors import CheckpointError
from t_switch.packing import (
    LAYOUTS,
    PackedTensor,
    default_seek_every,
    pack_ternary,
    ternary_bits,
    ternary_counts,
    unpack_ternary,
)
from t_switch.switch import BinarySwitch

__all__ = [
    "FORMAT_VERSION",
    "SwitchFile",
    "binary_entropy_bits",
    "compress_files",
    "load_switches",
    "save_switches",
    "storage_report",
]

FORMAT_VERSION = 1
_META_KEY = "t_switch"


@dataclass
class SwitchFile:
    """What :func:`load_switches` returns."""

    switches: dict[str, BinarySwitch]
    pretrained: dict[str, Tensor] | None
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _check_task(task: str) -> None:
    if not isinstance(task, str) or not task or "/" in task:
        raise ValueError(f"task names must be non-empty strings without '/', got {task!r}")


def save_switches(
    path: str | Path,
    switches: Mapping[str, BinarySwitch],
    pretrained: Mapping[str, Tensor] | None = None,
    group_size: int = 4,
    layout: str = "interleaved",
    extras: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> Path:
    """Write the switches of every task (and optionally ``theta_0`` once) to one safetensors file."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    tensors: dict[str, Tensor] = {}
    header: dict = {
        "format": "t-switch",
        "version": FORMAT_VERSION,
        "group_size": group_size,
        "layout": layout,
    }
    header["tasks"] = {}
    for task, sw in switches.items():
        _check_task(task)
        entries = {}
        for name, S in sw.signs.items():
            p = pack_ternary(S, group_size, layout)
            tensors[f"switch/{task}/{name}/bits"] = p.data
            if p.seek is not None:
                tensors[f"switch/{task}/{name}/seek"] = p.seek
            entries[name] = {
                "shape": list(p.shape),
                "nbits": p.nbits,
                "groups_nonzero": p.groups_nonzero,
                "nnz": p.nnz,
                "seek_every": p.seek_every,
            }
        tensors[f"scale/{task}"] = torch.tensor([sw.scales[n] for n in sw.signs], dtype=torch.float32)
        for name, t in sw.passthrough.items():
            tensors[f"passthrough/{task}/{name}"] = t
        header["tasks"][task] = {
            "tensors": entries,
            "drop_ratio": sw.drop_ratio,
            "passthrough": list(sw.passthrough),
        }
    if pretrained is not None:
        for name, t in pretrained.items():
            tensors[f"pretrained/{name}"] = t
    header["pretrained"] = pretrained is not None
    header["extras"] = {}
    for task, ex in (extras or {}).items():
        _check_task(task)
        header["extras"][task] = list(ex)
        for name, t in ex.items():
            tensors[f"extra/{task}/{name}"] = t
    return save_safetensors(tensors, path, metadata={_META_KEY: json.dumps(header)})


def load_switches(path: str | Path) -> SwitchFile:
    """Read a file written by :func:`save_switches` (clear errors for missing/foreign files)."""
    path = Path(path)
    tensors, meta = load_safetensors(path)
    if _META_KEY not in meta:
        raise CheckpointError(f"{path} is not a t-switch switch file (no '{_META_KEY}' header)")
    try:
        header = json.loads(meta[_META_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: damaged t-switch header (not JSON)") from None
    if (
        not isinstance(header, dict)
        or header.get("format") != "t-switch"
        or header.get("version") != FORMAT_VERSION
    ):
        raise CheckpointError(f"{path}: not a t-switch switch file of format version {FORMAT_VERSION}")
    try:
        return _decode(path, tensors, header)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged t-switch file ({exc})") from None


def _decode(path: Path, tensors: dict[str, Tensor], header: dict) -> SwitchFile:
    g, layout = int(header["group_size"]), header["layout"]
    switches = {}
    for task, info in header["tasks"].items():
        names = list(info["tensors"])
        scale = tensors[f"scale/{task}"]
        if scale.numel() != len(names):
            raise ValueError(f"{path}: task {task!r} has {scale.numel()} scales for {len(names)} tensors")
        signs = {}
        for name, e in info["tensors"].items():
            p = PackedTensor(
                tensors[f"switch/{task}/{name}/bits"],
                tuple(e["shape"]),
                g,
                int(e["nbits"]),
                int(e["groups_nonzero"]),
                int(e["nnz"]),
                layout,
                tensors.get(f"switch/{task}/{name}/seek"),
                int(e["seek_every"]),
            )
            signs[name] = unpack_ternary(p)
        scales = {n: float(s) for n, s in zip(names, scale.tolist())}
        pt = {n: tensors[f"passthrough/{task}/{n}"] for n in info["passthrough"]}
        switches[task] = BinarySwitch(signs, scales, pt, float(info["drop_ratio"]))
    pre = None
    if header.get("pretrained"):
        pre = {k[len("pretrained/") :]: v for k, v in tensors.items() if k.startswith("pretrained/")}
    extras = {
        t: {n: tensors[f"extra/{t}/{n}"] for n in names} for t, names in header.get("extras", {}).items()
    }
    return SwitchFile(switches, pre, extras, header)


def binary_entropy_bits(p: float) -> float:
    """``h(p) = -p log2 p - (1-p) log2 (1-p)``."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def storage_report(
    switches: Mapping[str, BinarySwitch],
    group_size: int = 4,
    layout: str = "interleaved",
    file_path: str | Path | None = None,
    model_numel: int | None = None,
) -> dict:
    """Storage of the switches counted several ways, per task and in total.

    * ``bits``: the format's ``ceil(n/g) + g G_nz + nnz``; ``bits_per_entry``; ``pct_fp32_bits`` =
      ``bits / (32 n)`` and ``pct_fp16_bits`` = ``bits / (16 n)`` (the storage ratio against full-precision task vectors; the paper reports 1-3 %);
    * ``payload_bytes`` (bit streams padded to whole bytes per tensor) and ``pct_fp32_payload``;
    * ``total_bytes`` = payload + lambdas (fp32) + 0-dim passthrough + seek tables (interleaved) and
      ``pct_fp32_total``, against fp32 task vectors of the same tensors;
    * ``entropy_bits_per_entry``: ``h(d) + d`` for density ``d`` (lower bound of any lossless
      ternary code with i.i.d. entries) and ``pct_fp32_entropy``;
    * ``file_bytes`` / ``pct_fp32_file`` when ``file_path`` is given (minus the stored theta_0);
    * ``pct_of_models`` when ``model_numel`` (parameters of one full model) is given: switch bytes
      against ``K`` fp32 fine-tuned models.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    per_task = {}
    tot = dict.fromkeys(
        ("numel", "nnz", "groups_nonzero", "bits", "payload_bytes", "total_bytes", "fp32_bytes"), 0
    )
    for task, sw in switches.items():
        row = dict.fromkeys(tot, 0)
        for S in sw.signs.values():
            n, gnz, nnz = ternary_counts(S, group_size)
            bits = ternary_bits(n, group_size, gnz, nnz)
            seek = 8 * math.ceil(gnz / default_seek_every(gnz)) if layout == "interleaved" and gnz else 0
            row["numel"] += n
            row["nnz"] += nnz
            row["groups_nonzero"] += gnz
            row["bits"] += bits
            row["payload_bytes"] += math.ceil(bits / 8)
            row["total_bytes"] += math.ceil(bits / 8) + 4 + seek
            row["fp32_bytes"] += 4 * n
        for t in sw.passthrough.values():
            row["total_bytes"] += 4 * t.numel()
            row["fp32_bytes"] += 4 * t.numel()
        per_task[task] = _ratios(row)
        for k in tot:
            tot[k] += row[k]
    total = _ratios(tot)
    total["num_tasks"] = len(switches)
    total["group_size"] = group_size
    total["layout"] = layout
    if file_path is not None:
        fp = Path(file_path)
        size = fp.stat().st_size
        f = load_switches(fp)
        pre_bytes = sum(t.numel() * t.element_size() for t in (f.pretrained or {}).values())
        total["file_bytes"] = size
        total["file_bytes_without_pretrained"] = size - pre_bytes
        total["pct_fp32_file"] = 100.0 * (size - pre_bytes) / max(tot["fp32_bytes"], 1)
    if model_numel is not None:
        total["pct_of_models"] = 100.0 * tot["total_bytes"] / (4.0 * model_numel * max(len(switches), 1))
    return {"total": total, "tasks": per_task}


def _ratios(row: dict) -> dict:
    n = max(row["numel"], 1)
    d = row["nnz"] / n
    ent = binary_entropy_bits(d) + d
    out = dict(row)
    out.update(
        density=d,
        bits_per_entry=row["bits"] / n,
        pct_fp32_bits=100.0 * row["bits"] / (32 * n),
        pct_fp16_bits=100.0 * row["bits"] / (16 * n),
        pct_fp32_payload=100.0 * row["payload_bytes"] / (4 * n),
        pct_fp32_total=100.0 * row["total_bytes"] / max(row["fp32_bytes"], 1),
        payload_mb=row["payload_bytes"] / 2**20,
        total_mb=row["total_bytes"] / 2**20,
        fp32_mb=row["fp32_bytes"] / 2**20,
        entropy_bits_per_entry=ent,
        pct_fp32_entropy=100.0 * ent / 32,
    )
    return out


def compress_files(
    pretrained: str,
    finetuned: Mapping[str, str],
    cfg,
    path: str | Path,
    with_pretrained: bool = False,
) -> tuple[Path, dict]:
    """T-Switch checkpoints given by path or cached hub id into one switch file; returns ``(path, report)``.

    ``cfg`` is a :class:`t_switch.config.SwitchConfig`; weights are read with
    :func:`t_switch.data.load_state` (safetensors, ``weights_only`` torch files, folders, cached hub ids).
    """
    from t_switch.data import load_state
    from t_switch.experiment import build_switches
    from t_switch.task_vector import task_vector

    pre = load_state(pretrained)
    tvs = {
        task: task_vector(pre, load_state(src), exclude=cfg.exclude, unexpected=cfg.unexpected_keys)
        for task, src in finetuned.items()
    }
    switches = build_switches(tvs, cfg)
    out = save_switches(
        path,
        switches,
        pretrained=pre if with_pretrained else None,
        group_size=cfg.group_size,
        layout=cfg.layout,
    )
    return out, storage_report(switches, cfg.group_size, cfg.layout, file_path=out)
