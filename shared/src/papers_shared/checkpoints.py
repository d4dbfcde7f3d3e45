"""Atomic checkpoints and resume.

Every write goes to a temporary file in the destination folder, is flushed and fsync'ed, then
``os.replace``d over the target, so an interrupted run leaves either the old or the new file, never a
truncated one. Tensor-only state (model weights) can be stored as safetensors; full training state
(optimizer, step, RNG) goes through ``torch.save``.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointManager",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng_state",
    "load_checkpoint",
    "load_safetensors",
    "restore_rng_state",
    "save_safetensors",
]


def _atomic_write(path: str | Path, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    return path


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = False):
    """Load a ``torch.save`` file with a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # corrupted or foreign file
        raise RuntimeError(f"could not read checkpoint {path}: {exc}") from exc


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Store a flat dict of tensors as safetensors, atomically. Non-contiguous tensors are copied."""
    from safetensors.torch import save

    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"safetensors stores tensors only; key {k!r} holds {type(v).__name__}")
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def load_safetensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(tensors, metadata)`` of a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    out = {}
    with safe_open(str(path), framework="pt", device=device) as fh:
        meta = dict(fh.metadata() or {})
        for k in fh.keys():
            out[k] = fh.get_tensor(k)
    return out, meta


def capture_rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Numbered checkpoints in a folder, written atomically, the newest ``keep`` kept.

    >>> mgr = CheckpointManager(out_dir / "ckpt")
    >>> state = mgr.load_latest()            # None on a fresh run
    >>> mgr.save(step, {"model": m.state_dict(), "optim": opt.state_dict(), "step": step})
    """

    pattern = re.compile(r"^ckpt-(\d+)\.pt$")

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = keep

    def _existing(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self.pattern.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, step: int, state: dict[str, Any], with_rng: bool = True) -> Path:
        state = dict(state)
        state.setdefault("step", step)
        if with_rng:
            state["rng"] = capture_rng_state()
        path = atomic_save(state, self.directory / f"ckpt-{step:09d}.pt")
        atomic_write_text(self.directory / "latest.json", json.dumps({"step": step, "file": path.name}))
        for _, old in self._existing()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest_path(self) -> Path | None:
        found = self._existing()
        return found[-1][1] if found else None

    def load_latest(self, map_location: str | torch.device = "cpu", restore_rng: bool = True):
        path = self.latest_path()
        if path is None:
            return None
        state = load_checkpoint(path, map_location=map_location)
        if restore_rng and "rng" in state:
            restore_rng_state(state["rng"])
        return state
