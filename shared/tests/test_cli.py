"""papers_shared.cli on a toy package: the contract every package CLI inherits.

Parsing, overrides mapped from the common flags, validation in show-config, the error boundary (a user
error is one line + exit 2, a bug keeps its traceback), the --out check before any work, and help texts
with a literal "%".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from papers_shared.cli import CLI, arg, check_output_dir, error_boundary, list_configs, resolve_config
from papers_shared.config import Config, field
from papers_shared.errors import CheckpointError, ConfigError, OutputPathError


@dataclass
class TrainCfg(Config):
    lr: float = field(0.1, gt=0, help="learning rate")
    steps: int = field(3, ge=1, help="optimizer steps")


@dataclass
class ToyCfg(Config):
    name: str = field("toy", help="run name")
    mode: Literal["a", "b"] = field("a", help="which variant")
    seeds: list[int] = field(default_factory=lambda: [0, 1], help="seeds")
    out_dir: str = field("runs/toy", help="output folder")
    train: TrainCfg = field(default_factory=TrainCfg, help="training")


def _toy_cli(calls: list) -> CLI:
    cli = CLI("toy", ToyCfg, package="papers_shared", keys={"seed": "seeds", "out": "out_dir"})

    @cli.command(
        "train", help="train at 50% of the budget", args=[arg("--frac", type=float, help="keep 10%")]
    )
    def train(cfg: ToyCfg, ctx) -> dict:
        calls.append((cfg, ctx))
        return {"lr": cfg.train.lr, "seeds": cfg.seeds, "out": str(ctx.out)}

    @cli.command("load", help="read a checkpoint", config=False, flags=())
    def load(ctx) -> None:
        raise CheckpointError("could not read checkpoint x.pt: damaged")

    @cli.command("bug", help="a programming error", config=False, flags=())
    def bug(ctx) -> None:
        raise RuntimeError("internal invariant broken")

    return cli


def test_help_with_a_literal_percent_renders(capsys):
    cli = _toy_cli([])
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert "50% of the budget" in out and "keep 10%" in out


def test_overrides_and_common_flags_reach_the_config(capsys, tmp_path):
    calls: list = []
    cli = _toy_cli(calls)
    assert cli.main(["train", "train.lr=0.5", "--seed", "7", "--out", str(tmp_path / "o")]) == 0
    cfg, ctx = calls[0]
    assert cfg.train.lr == 0.5 and cfg.seeds == [7]  # a list-typed seed key receives [N]
    assert ctx.out == tmp_path / "o" and (tmp_path / "o").is_dir()
    printed = capsys.readouterr().out
    assert '"lr": 0.5' in printed


def test_show_config_validates_like_a_run(capsys):
    cli = _toy_cli([])
    assert cli.main(["show-config", "mode=b", "train.steps=5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["mode"] == "b" and shown["train"]["steps"] == 5
    for bad, needle in (
        ("train.lr=-1", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("mode=c", "mode"),
        ("train.stepz=2", "train.stepz"),
    ):
        assert cli.main(["show-config", bad]) == 2, bad
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (bad, err)


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    cli = _toy_cli([])
    assert cli.main(["load"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["toy load: error: could not read checkpoint x.pt: damaged"]
    with pytest.raises(RuntimeError, match="internal invariant"):
        cli.main(["bug"])


def test_out_that_is_a_file_is_refused_before_the_command_runs(capsys, tmp_path):
    calls: list = []
    cli = _toy_cli(calls)
    target = tmp_path / "file"
    target.write_text("keep")
    assert cli.main(["train", "--out", str(target)]) == 2
    assert calls == [] and target.read_text() == "keep"
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(OutputPathError, match="parent of it is a file"):
        check_output_dir(target / "sub")


def test_missing_config_file_is_one_line(capsys, tmp_path):
    cli = _toy_cli([])
    assert cli.main(["show-config", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_ctrl_c_is_exit_130(capsys):
    def work():
        raise KeyboardInterrupt

    assert error_boundary("toy run", work) == 130
    assert "interrupted" in capsys.readouterr().err


def test_keys_must_name_config_fields():
    with pytest.raises(ValueError, match="not a field"):
        CLI("toy", ToyCfg, package="papers_shared", keys={"seed": "train.seed"})
    with pytest.raises(ValueError, match="maps only"):
        CLI("toy", ToyCfg, package="papers_shared", keys={"threads": "train.steps"})


def test_yaml_path_config_is_read(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("# a toy table\nmode: b\ntrain:\n  lr: 0.01\n")
    cli = _toy_cli([])
    assert cli.main(["show-config", "--config", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["mode"] == "b" and shown["train"]["lr"] == 0.01
    assert Path(path).exists()


def test_a_failing_command_leaves_no_empty_output_folder(capsys, tmp_path):
    cli = _toy_cli([])

    @cli.command("fail", help="fails on bad input after the --out check")
    def fail(cfg: ToyCfg, ctx) -> None:
        raise CheckpointError("could not read checkpoint y.pt: damaged")

    out = tmp_path / "runs" / "toy"
    assert cli.main(["fail", "--out", str(out)]) == 2
    assert not (tmp_path / "runs").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.main(["fail", "--out", str(kept)]) == 2
    assert kept.is_dir()  # a folder that existed before is never removed


def test_base_configs_are_not_listed_but_still_included_and_resolved(tmp_path, monkeypatch, capsys):
    """A shipped YAML whose name starts with ``_`` is a base that tables include, not a table to run."""
    pkg = tmp_path / "toy_configs_pkg"
    (pkg / "configs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "configs" / "_base_paper.yaml").write_text("# shared settings\ntrain:\n  lr: 0.01\n")
    (pkg / "configs" / "table1.yaml").write_text("# table 1\n_base_: _base_paper.yaml\nmode: b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert list(list_configs("toy_configs_pkg")) == ["table1"]
    assert list(list_configs("toy_configs_pkg", include_bases=True)) == ["_base_paper", "table1"]
    assert resolve_config("toy_configs_pkg", "_base_paper") == pkg / "configs" / "_base_paper.yaml"
    with pytest.raises(ConfigError, match=r"\(shipped: table1\)"):
        resolve_config("toy_configs_pkg", "nope")
    cli = CLI("toy", ToyCfg, package="toy_configs_pkg")
    assert cli.main(["list-configs"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{'table1':<32} table 1"]
    assert cli.main(["show-config", "--config", "table1"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["mode"] == "b" and shown["train"]["lr"] == 0.01
