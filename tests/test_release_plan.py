"""The release workflow's plan: tag -> package, version check, papers-shared first when unpublished."""

import importlib.util

import pytest
from _workspace import ROOT

spec = importlib.util.spec_from_file_location("release_plan", ROOT / ".ci" / "release_plan.py")
release_plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_plan)


def test_members_cover_the_workspace():
    found = release_plan.members()
    assert "papers-shared" in found and "esma-attack" in found and "esma" not in found
    assert len(found) == 11 and all(v for _, v in found.values())


def test_plan_for_a_package_tag_publishes_shared_first_when_missing():
    name, (folder, version) = "mecoin", release_plan.members()["mecoin"]
    out = release_plan.plan(f"mecoin-v{version}", published=lambda n, v: False)
    assert out["name"] == name and out["folder"] == str(folder) and out["publish_shared"] == "true"
    out = release_plan.plan(f"mecoin-v{version}", published=lambda n, v: True)
    assert out["publish_shared"] == "false"
    shared = release_plan.members()["papers-shared"][1]
    assert (
        release_plan.plan(f"papers-shared-v{shared}", published=lambda n, v: False)["publish_shared"]
        == "false"
    )


def test_plan_rejects_wrong_versions_names_and_forms():
    with pytest.raises(SystemExit, match="says version"):
        release_plan.plan("mecoin-v99.0.0", published=lambda n, v: True)
    with pytest.raises(SystemExit, match="no workspace package is named 'esma'"):
        release_plan.plan("esma-v0.1.0", published=lambda n, v: True)
    with pytest.raises(SystemExit, match="not of the form"):
        release_plan.plan("mecoin-0.1.0", published=lambda n, v: True)
