"""Errors raised by the data loaders."""

from __future__ import annotations

from pathlib import Path

from papers_shared.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset (or model weights) is absent locally and cannot be fetched.

    The message names the expected path and how to obtain the data; loaders never fall back to
    synthetic data silently.
    """

    def __init__(self, name: str, path: str | Path | None, how: str) -> None:
        where = f" at {Path(path).expanduser()}" if path is not None else ""
        super().__init__(f"{name} was not found{where}. {how}")
        self.name = name
        self.path = path
        self.how = how
