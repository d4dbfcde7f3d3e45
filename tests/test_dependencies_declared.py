"""Each package installs alone: every third-party module its sources import is declared.

A static, offline stand-in for `uv sync --package X` in a fresh environment (which `.ci/run` also does):
the import must come from the package's own dependencies, its optional extras (for lazy imports), or
papers-shared's declared dependencies.
"""

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires

import pytest
from _workspace import PACKAGE_DIRS, ROOT, load_pyproject

IDS = [p.name for p in PACKAGE_DIRS]
DIST_OF = {k: [d.lower().replace("_", "-") for d in v] for k, v in packages_distributions().items()}
WORKSPACE_IMPORTS = {"papers_shared"} | {p.name.replace("-", "_") for p in PACKAGE_DIRS}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _extras(req: str) -> list[str]:
    m = re.search(r"\[([^\]]+)\]", req)
    return [e.strip() for e in m.group(1).split(",")] if m else []


def _closure(reqs: list[str]) -> set[str]:
    """Declared distributions plus their install requirements (what pip would install)."""
    seen: set[str] = set()
    todo = [(_name(r), _extras(r)) for r in reqs]
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            sub = requires(name) or []
        except Exception:
            continue
        for r in sub:
            marker = r.split(";", 1)[1] if ";" in r else ""
            if "extra" in marker and not any(f'"{e}"' in marker or f"'{e}'" in marker for e in extras):
                continue
            if "python_version" in marker or "sys_platform" in marker or "platform" in marker:
                try:
                    from packaging.markers import Marker

                    if not Marker(marker).evaluate({"extra": extras[0] if extras else ""}):
                        continue
                except Exception:
                    pass
            todo.append((_name(r.split(";")[0]), _extras(r.split(";")[0])))
    return seen


def _imports(src_dir):
    top_level, lazy = set(), set()
    for f in src_dir.rglob("*.py"):
        tree = ast.parse(f.read_text(), filename=str(f))
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Try, ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if sub is not node:
                        guarded.add(id(sub))
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for sub in ast.walk(node):
                    guarded.add(id(sub))
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            for m in mods:
                (lazy if id(node) in guarded else top_level).add(m.split(".")[0])
    return top_level, lazy


def _dists(module: str) -> set[str]:
    return set(DIST_OF.get(module, [module.lower().replace("_", "-")]))


@pytest.mark.parametrize("pkg", PACKAGE_DIRS, ids=IDS)
def test_imports_are_declared(pkg):
    meta = load_pyproject(pkg)["project"]
    shared = load_pyproject(ROOT / "shared")["project"]
    shared_extras = [e for r in meta["dependencies"] if _name(r) == "papers-shared" for e in _extras(r)]
    shared_reqs = list(shared["dependencies"]) + [
        r for e in shared_extras for r in shared.get("optional-dependencies", {}).get(e, [])
    ]
    required = _closure(list(meta["dependencies"]) + shared_reqs)
    optional = _closure([r for rs in meta.get("optional-dependencies", {}).values() for r in rs]) | required
    top_level, lazy = _imports(pkg / "src")
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for mods, allowed, kind in ((top_level, required, "module-level"), (lazy - top_level, optional, "lazy")):
        for m in sorted(mods - stdlib - WORKSPACE_IMPORTS):
            if not (_dists(m) & allowed):
                problems.append(f"{kind} import {m!r} (distribution {sorted(_dists(m))}) is not declared")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pkg", PACKAGE_DIRS, ids=IDS)
def test_no_sibling_imports(pkg):
    own = pkg.name.replace("-", "_")
    top_level, lazy = _imports(pkg / "src")
    siblings = (top_level | lazy) & (WORKSPACE_IMPORTS - {own, "papers_shared"})
    assert not siblings, f"{pkg.name} imports sibling packages {sorted(siblings)}"
