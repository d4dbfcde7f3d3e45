"""The files ``esma`` writes for users to exchange: safetensors with JSON metadata (ours).

Generators, easy-sample banks and TTP generators are stored as a flat dict of tensors plus string
metadata (``format`` and the JSON needed to rebuild the object), so loading one never runs code. Files
of earlier versions (``torch.save`` dicts, and the released TTP ``.pth`` state dicts) are still read, but
only through :func:`papers_shared.checkpoints.load_checkpoint` (``weights_only=True``): a crafted pickle
is refused with a one-line :class:`~papers_shared.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from papers_shared.checkpoints import load_checkpoint, load_safetensors, save_safetensors
from papers_shared.errors import CheckpointError

__all__ = ["is_safetensors", "read_weights", "write_weights"]


def is_safetensors(path: str | Path) -> bool:
    """True when ``path`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def write_weights(path: str | Path, tensors: dict[str, torch.Tensor], fmt: str, **meta: Any) -> Path:
    """Write ``tensors`` as safetensors with metadata ``format=fmt`` and every ``meta`` value as JSON."""
    metadata = {"format": fmt, **{k: json.dumps(v) for k, v in meta.items()}}
    return save_safetensors(tensors, path, metadata=metadata)


def read_weights(
    path: str | Path,
    fmt: str,
    what: str,
    map_location: str | torch.device = "cpu",
    legacy: Callable[[Any], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a file written by :func:`write_weights` with format ``fmt``.

    A file that is not safetensors is read with ``weights_only=True`` and converted by ``legacy`` (an
    object of an earlier version -> ``(tensors, metadata)``; it raises ``KeyError``/``TypeError``/
    ``ValueError`` on foreign content). ``what`` names the file kind in errors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    a = "an" if what[:1] in "AEIOU" else "a"
    if not is_safetensors(path) and path.suffix != ".safetensors":
        try:
            obj = load_checkpoint(path, map_location=map_location)
        except SafetensorError as exc:  # torch.load hands files that look like safetensors over to it
            raise CheckpointError(f"could not read {path}: damaged ({exc})") from None
        if legacy is None:
            raise CheckpointError(f"{path} is not {a} {what} file (expected safetensors)")
        try:
            return legacy(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path} is not {a} {what} file ({exc})") from None
    tensors, raw = load_safetensors(path, device=str(map_location))
    if raw.get("format") != fmt:
        raise CheckpointError(
            f"{path} is not {a} {what} file (format {raw.get('format')!r}, expected {fmt!r})"
        )
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: damaged metadata ({exc})") from None
    return tensors, meta
