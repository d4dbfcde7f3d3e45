"""Hugging Face ``datasets`` and hub helpers with clear offline errors."""

from __future__ import annotations

from typing import Any

from papers_shared.data.errors import DatasetNotFoundError

__all__ = ["load_hf_dataset", "require_hub_model"]


def load_hf_dataset(path: str, name: str | None = None, split: str | None = None, **kwargs: Any):
    """``datasets.load_dataset`` that turns "not cached and offline" into :class:`DatasetNotFoundError`.

    ``path`` may also be a local folder or data files (``load_dataset("json", data_files=...)``).
    """
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("HF datasets is required: pip install 'papers-shared[hf]'") from exc
    try:
        return datasets.load_dataset(path, name, split=split, **kwargs)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as exc:
        msg = str(exc)
        if isinstance(exc, ValueError) and "offline" not in msg.lower() and "couldn't" not in msg.lower():
            raise
        raise DatasetNotFoundError(
            f"HF dataset {path!r}{f' ({name})' if name else ''}",
            None,
            "It is not in the local HF cache and the hub cannot be reached. On a machine with internet run "
            f"datasets.load_dataset({path!r}{f', {name!r}' if name else ''}) once (or save_to_disk and "
            f"pass the folder), then set HF_DATASETS_OFFLINE=1. Original error: {msg[:300]}",
        ) from exc


def require_hub_model(model_id: str, **kwargs: Any) -> str:
    """Return the local snapshot folder of a hub model, or raise a clear error when it is not cached."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover
        raise ImportError("huggingface_hub is required to resolve hub model ids") from exc
    try:
        return snapshot_download(model_id, local_files_only=True, **kwargs)
    except Exception as exc:
        raise DatasetNotFoundError(
            f"HF hub model {model_id!r}",
            None,
            "It is not in the local HF cache. On a machine with internet run "
            f"huggingface_hub.snapshot_download({model_id!r}) (or `hf download {model_id}`), "
            "then point HF_HOME at that cache or pass a local folder instead of the id.",
        ) from exc
