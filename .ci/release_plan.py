#!/usr/bin/env python3
"""Plan a release from a tag ``<distribution>-v<version>`` (used by .github/workflows/release.yml).

Prints ``key=value`` lines for ``$GITHUB_OUTPUT``: the package folder, its distribution name and version,
and whether papers-shared must be published first (its version in the repository is not on PyPI yet).
Fails when no package has that name or when the tag's version differs from the pyproject's.
"""

from __future__ import annotations

import json
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def members(root: Path = ROOT) -> dict[str, tuple[Path, str]]:
    """Distribution name -> (folder, version) of every workspace member."""
    out = {}
    for pyproject in [root / "shared" / "pyproject.toml", *sorted(root.glob("packages/*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text())["project"]
        out[project["name"]] = (pyproject.parent.relative_to(root), project["version"])
    return out


def on_pypi(name: str, version: str) -> bool:
    """Whether ``name==version`` is already published (PyPI's JSON API; 404 means not)."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json", timeout=30) as resp:
            json.load(resp)
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def plan(tag: str, root: Path = ROOT, published: Callable[[str, str], bool] = on_pypi) -> dict[str, str]:
    name, sep, version = tag.rpartition("-v")
    if not sep or not name or not version:
        raise SystemExit(f"tag {tag!r} is not of the form <distribution>-v<version>")
    found = members(root)
    if name not in found:
        raise SystemExit(f"no workspace package is named {name!r}; known: {sorted(found)}")
    folder, current = found[name]
    if current != version:
        raise SystemExit(f"tag {tag} says version {version}, but {folder}/pyproject.toml says {current}")
    shared_folder, shared_version = found["papers-shared"]
    needs_shared = name != "papers-shared" and not published("papers-shared", shared_version)
    return {
        "name": name,
        "version": version,
        "folder": str(folder),
        "shared_version": shared_version,
        "publish_shared": "true" if needs_shared else "false",
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: release_plan.py <distribution>-v<version>")
    for key, value in plan(sys.argv[1]).items():
        print(f"{key}={value}")
