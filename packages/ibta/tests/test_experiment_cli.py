"""Experiment runner, configs, real-data errors and the CLI (spec §5, §7)."""

import csv
from pathlib import Path

import pytest
import torch

from ibta.cli import main
from ibta.config import AttackConfig, ExperimentConfig, QuickConfig
from ibta.experiment import ATTACK_NAMES, build_attack, build_data, build_model, run_experiment
from papers_shared.attacks import RAP, SSA, IterativeAttack
from papers_shared.config import ConfigError, load_config
from papers_shared.data import DatasetNotFoundError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "max_images=12",
    "batch_size=12",
    "digits.epochs=1",
    "attacks=[mi,ibta_mi]",
    "attack.steps=2",
]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_named_attack_builds(model, name):
    atk = build_attack(name, model, AttackConfig(), targeted=False)
    assert isinstance(atk, IterativeAttack)
    if name.startswith("ibta_"):
        assert atk.lam == 0.1 and atk.gamma == 0.1 and atk.sigma == 0.1


def test_named_attack_settings(model):
    assert isinstance(build_attack("rap_official", model, AttackConfig(), True), RAP)
    rap = build_attack("rap_official", model, AttackConfig(), True)
    assert rap.inner_steps == 8 and rap.eps_n == pytest.approx(16 / 255)
    ssa = build_attack("ssa_paper", model, AttackConfig(), False)
    assert type(ssa) is SSA and ssa.sigma == pytest.approx(16 / 255)
    legacy = build_attack("ibta_rap_logit_ti", model, AttackConfig(legacy_rap_eps_n=True), False)
    assert legacy.eps_n == 12.0
    assert build_attack("ibta_rap_logit_ti", model, AttackConfig(), False).eps_n == pytest.approx(12 / 255)
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("pgd", model, AttackConfig(), False)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")))
def test_configs_load(path):
    cls = QuickConfig if path.stem == "quick" else ExperimentConfig
    cfg = load_config(cls, path)
    if cls is ExperimentConfig:
        assert all(a in ATTACK_NAMES for a in cfg.attacks)


def test_exp2_inherits_and_overrides():
    cfg = load_config(ExperimentConfig, CONFIGS / "exp2_inception_ens.yaml")
    assert cfg.sources == ["inception_v3", "ensemble"] and "adv_inception_v3" in cfg.victims
    assert cfg.attack.alpha == pytest.approx(1.25 / 255)


def test_unknown_config_key_raises():
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(ExperimentConfig, CONFIGS / "exp1_cnn.yaml", ["attack.lamda=1"])


def test_missing_imagenet_gives_dataset_not_found(tmp_path):
    cfg = ExperimentConfig(data_root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        build_data(cfg, targeted=True)
    cfg = ExperimentConfig(dataset="nips17", data_root=str(tmp_path / "nips"))
    with pytest.raises(DatasetNotFoundError, match="images.csv"):
        build_data(cfg, targeted=False)


def test_missing_weights_offline_give_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ExperimentConfig(download=False)
    with pytest.raises((FileNotFoundError, RuntimeError), match="resnet50"):
        build_model("resnet50", cfg, torch.device("cpu"), {})


@pytest.mark.slow
def test_run_experiment_digits_resumes(tmp_path):
    cfg = load_config(ExperimentConfig, CONFIGS / "digits_tiny.yaml", TINY + [f"out_dir={tmp_path}"])
    rows = run_experiment(cfg, progress=False)
    # 2 attacks x (3 victims + white box)
    assert len(rows) == 8
    assert {r["attack"] for r in rows} == {"mi", "ibta_mi"}
    for r in rows:
        assert r["protocol"] == "all-source" and r["n"] == 12 and 0.0 <= r["success"] <= 1.0
        assert r["eps"] == pytest.approx(0.15) and r["steps"] == 2
    again = run_experiment(cfg, progress=False)
    assert len(again) == 8  # every cell was already in the CSV


def test_positional_base(model):
    from ibta import IBTA_TIFGSM, IBTAAttack

    assert isinstance(IBTAAttack(model, "ti"), IBTA_TIFGSM)


@pytest.mark.slow
def test_ablate_cli_one_value_each(tmp_path, capsys):
    args = [
        "ablate",
        "--config",
        str(CONFIGS / "digits_tiny.yaml"),
        "--no-progress",
        *TINY,
        "attacks=[ibta_mi]",
        "sweep_lam=[0.0]",
        "sweep_gamma=[0.5]",
        "sweep_sigma=[0.2]",
        f"out_dir={tmp_path}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lam=0 untargeted digits_cnn->digits_mlp ibta_mi" in out and "sigma=0.2" in out
    assert (tmp_path / "digits_tiny_gamma0.5" / "results.csv").is_file()


def test_cli_smoke(tmp_path, capsys):
    assert main(["show-config", "--config", str(CONFIGS / "exp1_cnn.yaml"), "attack.lam=1"]) == 0
    assert "lam: 1" in capsys.readouterr().out
    assert main(["show-config", "--config", str(CONFIGS / "exp1_cnn.yaml"), "nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    args = [
        "attack",
        "--config",
        str(CONFIGS / "digits_tiny.yaml"),
        "--no-progress",
        *TINY,
        f"out_dir={tmp_path}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| untargeted | digits_cnn | ibta_mi |" in out
    path = tmp_path / "digits_tiny" / "results.csv"
    with path.open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    assert main(["eval", "--csv", str(path)]) == 0
    assert "digits_mlp" in capsys.readouterr().out
    assert main(["eval", "--csv", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = ["attack", "--config", str(CONFIGS / "exp1_cnn.yaml"), f"data_root={tmp_path / 'no_imagenet'}"]
    assert main(bad) == 2
    assert "no_imagenet" in capsys.readouterr().err


@pytest.mark.slow
def test_mine_cli_on_digits(capsys):
    args = ["mine", "--config", str(CONFIGS / "digits_tiny.yaml"), "--attack", "ibta_mi", *TINY]
    args += ["mine.steps=10", "mine.hidden=8", "mine.pool=2", "mine.eval_every=5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '"attack": "ibta_mi"' in out and "mi_nats" in out
    assert main(["mine", "--config", str(CONFIGS / "digits_tiny.yaml"), "--attack", "nope", *TINY]) == 2
