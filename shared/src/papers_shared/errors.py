"""Errors a user can act on.

Everything that derives from :class:`UserError` is a mistake in the input (a config, a file, a path,
missing data), not a bug: :func:`papers_shared.cli.error_boundary` prints it as one line naming the file
and what to do, and exits with status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "OutputPathError",
    "UserError",
]


class UserError(Exception):
    """An error in what the user gave us; shown as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """Unknown keys, wrong types, values out of range or unreadable config files."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or weight file that is damaged, foreign, or refused because it would run code."""


class InputError(UserError, ValueError):
    """An input file (CSV, JSON, table) that is malformed: names the file, the row or column, and the fix."""


class OutputPathError(UserError, OSError):
    """An output path that cannot be written (a file where a folder is needed, no permission)."""
