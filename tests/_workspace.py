"""Paths and helpers shared by the workspace tests."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())


def load_pyproject(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())
