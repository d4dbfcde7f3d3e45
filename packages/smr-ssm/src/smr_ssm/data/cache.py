"""The processed-data caches (token ids, LRA tensors): written atomically, read without running code,
rebuilt with a warning when damaged (ours)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from papers_shared.checkpoints import CheckpointError, load_checkpoint

__all__ = ["load_cache"]


def load_cache(path: Path) -> Any | None:
    """The cached object at ``path`` (``weights_only`` load), or ``None`` when there is none or it is
    damaged or refused - then the caller rebuilds it (and overwrites the file)."""
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        warnings.warn(f"rebuilding the cache {path}: {exc}", RuntimeWarning, stacklevel=2)
        return None
