"""Atomic checkpoints, safe loading and resume.

Every write goes to a temporary file in the destination folder, is flushed and fsync'ed, then
``os.replace``d over the target, and the folder is fsync'ed so the rename itself survives a crash: an
interrupted run leaves either the old or the new file, never a truncated one.

Loading never runs code: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which accepts
tensors, numbers, strings and containers of them, plus the few extra types a caller allow-lists
(``safe_globals``). A file that would need anything else (a crafted pickle) is refused with a
:class:`CheckpointError` naming the file. Weights that users exchange (generators, adapters, switches,
memories) are written as safetensors (:func:`save_safetensors`); full training state (optimizer, step,
RNG) goes through ``torch.save`` and is read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from papers_shared.errors import CheckpointError

__all__ = [
    "CheckpointError",
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
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """fsync a folder so that a rename inside it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    safe_globals: Sequence[Any] = (),
):
    """Load a ``torch.save`` file without running code (``weights_only=True``).

    ``safe_globals`` allow-lists extra classes the state is known to hold (e.g. a package's own enum);
    anything else in the file is refused. A missing file raises :class:`FileNotFoundError`; a damaged,
    foreign or refused file raises :class:`CheckpointError` with one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that could run code (global "
                f"{found.group(1)}); only "
                "tensors and plain containers are loaded; use a file written by this package"
            ) from None
        raise CheckpointError(f"could not read checkpoint {path}: damaged or not a torch file") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, ImportError) as exc:
        raise CheckpointError(
            f"could not read checkpoint {path}: damaged or not a torch file ({_first_line(exc)})"
        ) from None


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
    """Return ``(tensors, metadata)`` of a safetensors file; a damaged file raises :class:`CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    out = {}
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            meta = dict(fh.metadata() or {})
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"could not read safetensors file {path}: damaged or not safetensors ({_first_line(exc)})"
        ) from None
    return out, meta


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain types (loadable with ``weights_only``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
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

    def __init__(self, directory: str | Path, keep: int = 2, safe_globals: Sequence[Any] = ()) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = keep
        self.safe_globals = tuple(safe_globals)

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
        """The newest checkpoint that loads (``None`` on a fresh run).

        A damaged newer checkpoint is skipped with a warning naming it; if none of the checkpoints in the
        folder loads, :class:`CheckpointError` lists them (delete them to start afresh).
        """
        found = self._existing()
        if not found:
            return None
        damaged = []
        for _, path in reversed(found):
            try:
                state = load_checkpoint(path, map_location=map_location, safe_globals=self.safe_globals)
            except CheckpointError as exc:
                warnings.warn(f"skipping damaged checkpoint {path}: {exc}", RuntimeWarning, stacklevel=2)
                damaged.append(path.name)
                continue
            if restore_rng and isinstance(state, dict) and "rng" in state:
                restore_rng_state(state["rng"])
            return state
        raise CheckpointError(
            f"no checkpoint in {self.directory} could be loaded (damaged: {', '.join(damaged)}); "
            "delete them to start afresh"
        )
