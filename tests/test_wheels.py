"""Every wheel works alone: it carries its configs as package data, its console script and its
`reproduce` entry point, and depends on papers-shared by name (so `pip install --find-links dist <name>`
resolves it). `.ci/wheels` installs each wheel with plain pip in a fresh venv and runs its CLI."""

import shutil
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from _workspace import PACKAGE_DIRS, ROOT, load_pyproject

IDS = [p.name for p in PACKAGE_DIRS]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("needs the uv executable to build the wheels (CI installs it)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv, "build", "--all-packages", "--wheel", "-q", "-o", str(out)], cwd=ROOT, check=True, timeout=600
    )
    found = {}
    for whl in out.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            found[Parser().parsestr(z.read(meta).decode())["Name"]] = whl
    return found


def _files(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


@pytest.mark.slow
@pytest.mark.parametrize("pkg", PACKAGE_DIRS, ids=IDS)
def test_wheel_carries_configs_scripts_and_entry_points(pkg, wheels):
    meta = load_pyproject(pkg)["project"]
    imp = next((pkg / "src").iterdir()).name
    whl = wheels[meta["name"]]
    files = _files(whl)
    configs = sorted(p.name for p in (pkg / "configs").glob("*.yaml"))
    assert configs, "every package ships configs"
    missing = [c for c in configs if f"{imp}/configs/{c}" not in files]
    assert not missing, f"{whl.name} lacks configs {missing}"
    assert f"{imp}/__init__.py" in files and f"{imp}/cli.py" in files and f"{imp}/quick.py" in files
    assert not [f for f in files if "/tests/" in f or f.startswith("tests/")], "tests do not ship"
    with zipfile.ZipFile(whl) as z:
        ep = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
        text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert f"{pkg.name} = {imp}.cli:main" in ep
    assert f"{pkg.name} = {imp}.quick:quick_reproduction" in ep
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist: papers-shared")]
    assert requires, "depends on papers-shared by name"


@pytest.mark.slow
def test_papers_shared_wheel_has_the_runner(wheels):
    files = _files(wheels["papers-shared"])
    for mod in ("cli", "config", "checkpoints", "distributed", "reproduce", "results", "errors"):
        assert f"papers_shared/{mod}.py" in files
    with zipfile.ZipFile(wheels["papers-shared"]) as z:
        ep = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "reproduce = papers_shared.reproduce:main" in ep
