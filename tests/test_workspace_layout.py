"""The workspace keeps its promises: ten packages, each self-contained, registered and runnable."""

import re
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points

import pytest
from _workspace import PACKAGE_DIRS, ROOT, load_pyproject

EXPECTED = {
    "fsg-bnn": "fsg_bnn",
    "t-switch": "t_switch",
    "mecoin": "mecoin",
    "sr-cis": "sr_cis",
    "ofs-dpo": "ofs_dpo",
    "esma": "esma",
    "ibta": "ibta",
    "smr-ssm": "smr_ssm",
    "g2g-fscil": "g2g_fscil",
    "icl-vmf": "icl_vmf",
}
IDS = [p.name for p in PACKAGE_DIRS]
#: distribution names on PyPI where they differ from the folder (`esma` on PyPI is an unrelated project)
DIST_NAME = {"esma": "esma-attack"}


def _req_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_all_ten_packages_present():
    assert {p.name for p in PACKAGE_DIRS} == set(EXPECTED)


def test_root_lists_every_member():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {_req_name(d) for d in root["project"]["dependencies"]}
    assert deps == {DIST_NAME.get(k, k) for k in EXPECTED} | {"papers-shared"}
    assert (ROOT / "uv.lock").is_file()


@pytest.mark.parametrize("pkg", PACKAGE_DIRS, ids=IDS)
def test_package_metadata(pkg):
    meta = load_pyproject(pkg)["project"]
    imp = EXPECTED[pkg.name]
    assert meta["name"] == DIST_NAME.get(pkg.name, pkg.name)
    assert "papers-shared" in {_req_name(d) for d in meta["dependencies"]}
    assert meta["scripts"][pkg.name] == f"{imp}.cli:main"
    assert meta["entry-points"]["papers_shared.reproduce"][pkg.name] == f"{imp}.quick:quick_reproduction"
    assert (pkg / "src" / imp / "__init__.py").is_file()
    assert (pkg / "README.md").is_file() and (pkg / "tests").is_dir()
    assert list((pkg / "configs").glob("*.yaml")), "one YAML config per paper table"


def test_reproduce_entry_points_resolve():
    eps = {ep.name: ep for ep in entry_points(group="papers_shared.reproduce")}
    assert set(EXPECTED) <= set(eps)
    for name in EXPECTED:
        assert callable(eps[name].load())


@pytest.mark.parametrize("pkg", PACKAGE_DIRS, ids=IDS)
def test_imports_alone_without_siblings_or_mamba(pkg):
    """Importing a package pulls in no other workspace package and never mamba_ssm (CPU-safe)."""
    imp = EXPECTED[pkg.name]
    others = sorted(set(EXPECTED.values()) - {imp})
    code = (
        f"import sys, importlib; importlib.import_module({imp!r}); "
        f"bad = [m for m in {others!r} + ['mamba_ssm', 'selective_scan_cuda'] if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("pkg", PACKAGE_DIRS, ids=IDS)
def test_cli_help_runs(pkg):
    imp = EXPECTED[pkg.name]
    res = subprocess.run(
        [sys.executable, "-c", f"import sys; from {imp}.cli import main; sys.exit(main(['--help']))"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()
