"""Experiment runner, configs (validated when built), input tables, weight files and the CLI."""

import csv
from pathlib import Path

import pytest
import torch

from ibta.cli import main
from ibta.config import ATTACK_NAMES, AttackConfig, ExperimentConfig, QuickConfig
from ibta.data import build_data
from ibta.experiment import CSV_FIELDS, build_attack, read_rows, run_experiment
from ibta.models import build_model, load_weights, small_cnn
from papers_shared.attacks import RAP, SSA, IterativeAttack
from papers_shared.cli import list_configs, resolve_config
from papers_shared.config import ConfigError, load_config
from papers_shared.data import DatasetNotFoundError
from papers_shared.errors import CheckpointError, InputError
from papers_shared.testing import CodeRunningPickle

TINY = [
    "max_images=12",
    "batch_size=12",
    "digits.epochs=1",
    "attacks=[mi,ibta_mi]",
    "attack.steps=2",
]


# ------------------------------------------------------------------------------------------ attacks
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_named_attack_builds(model, name):
    atk = build_attack(name, model, AttackConfig(), targeted=False)
    assert isinstance(atk, IterativeAttack)
    if name.startswith("ibta_"):
        assert atk.lam == 0.1 and atk.gamma == 0.1 and atk.sigma == 0.1 and not atk.shared_transform


def test_named_attack_settings(model):
    rap = build_attack("rap_official", model, AttackConfig(), True)
    assert isinstance(rap, RAP) and rap.inner_steps == 8 and rap.eps_n == pytest.approx(16 / 255)
    ssa = build_attack("ssa_paper", model, AttackConfig(), False)
    assert type(ssa) is SSA and ssa.sigma == pytest.approx(16 / 255)
    legacy = build_attack("ibta_rap_logit_ti", model, AttackConfig(legacy_rap_eps_n=True), False)
    assert legacy.eps_n == 12.0
    assert build_attack("ibta_rap_logit_ti", model, AttackConfig(), False).eps_n == pytest.approx(12 / 255)
    assert build_attack("ibta_di", model, AttackConfig(shared_transform=True), False).shared_transform
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("pgd", model, AttackConfig(), False)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", sorted(list_configs("ibta")))
def test_shipped_configs_load_and_describe_themselves(name):
    path = resolve_config("ibta", name)
    assert path.read_text().startswith("# ")
    cfg = load_config(ExperimentConfig, path)
    assert all(a in ATTACK_NAMES for a in cfg.attacks)


def test_quick_config_is_the_shipped_one():
    from ibta.quick import quick_config

    q = quick_config().quick
    assert q.lam == 0.1 and len(q.seeds) >= 6 and "rap_logit_ti" in q.families
    assert q.ablation_lams == [1.0]


def test_exp2_inherits_and_overrides():
    cfg = load_config(ExperimentConfig, resolve_config("ibta", "exp2_inception_ens"))
    assert cfg.sources == ["inception_v3", "ensemble"] and "adv_inception_v3" in cfg.victims
    assert cfg.attack.alpha == pytest.approx(1.25 / 255)


@pytest.mark.parametrize(
    "override, match",
    [
        ("attack.eps=5", r"attack\.eps=5.0: must be <= 1"),
        ("attack.eps=-1", r"attack\.eps=-1.0: must be >= 0"),
        ("attack.alpha=2", r"attack\.alpha"),
        ("attack.steps=0", r"attack\.steps=0: must be >= 1"),
        ("attack.lam=nan", r"attack\.lam.*finite"),
        ("attack.diversity_prob=1.5", r"diversity_prob"),
        ("attack.ssa_mode=fft", r"ssa_mode='fft' is not one of"),
        ("attack.lamda=1", "unknown config key"),
        ("batch_size=0", r"batch_size=0: must be >= 1"),
        ("mine.lr=-1", r"mine\.lr=-1.0: must be > 0"),
        ("digits.size=18", r"multiple of 4"),
        ("quick.families=[mi,pgd]", r"quick\.families: unknown \['pgd'\]"),
        ("attacks=[mi,pgd]", r"attacks: unknown \['pgd'\]"),
        ("modes=[sideways]", r"modes"),
        ("sources=[resnet5]", r"sources: unknown \['resnet5'\]"),
        ("weights.vgg16=x.pt", r"weights names models the run does not use: \['vgg16'\]"),
        ("targets=[1,2]", r"targets \[1, 2\] are not among class_ids"),
    ],
)
def test_bad_values_fail_when_the_config_is_built(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, resolve_config("ibta", "exp1_cnn"), [override])


def test_python_construction_validates_too():
    with pytest.raises(ConfigError, match="eps"):
        AttackConfig(eps=5.0)
    with pytest.raises(ConfigError, match="seeds repeat"):
        QuickConfig(seeds=[0, 0])
    with pytest.raises(ConfigError, match="digits has the classes 0-9"):
        ExperimentConfig(dataset="digits", sources=["digits_cnn"], victims=["digits_mlp"])


# ------------------------------------------------------------------------------------------ data
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


# ------------------------------------------------------------------------------------------ weight files
def test_weights_round_trip_safetensors_and_torch(tmp_path):
    from papers_shared.checkpoints import save_safetensors

    net = small_cnn(10, 16, 16, seed=0)
    save_safetensors(net.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        state = load_weights(tmp_path / name)
        assert state.keys() == net.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    cfg = load_config(
        ExperimentConfig, resolve_config("ibta", "digits_tiny"), [f"weights.digits_cnn={tmp_path / 'w.pt'}"]
    )
    from ibta.models import read_weights

    model = build_model("digits_cnn", cfg, torch.device("cpu"), {}, read_weights(cfg))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), net.parameters()))
    assert model.weights_source.endswith("w.pt")


def test_crafted_pickle_weights_are_refused_and_run_nothing(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"conv.weight": torch.zeros(1), "x": CodeRunningPickle(target)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pt") as err:
        load_weights(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and not target.exists()


def test_damaged_or_foreign_weights_are_one_line_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    for name, match in (
        ("bad.safetensors", "could not read safetensors"),
        ("bad.pt", "could not read checkpoint"),
        ("nostate.pt", "holds no model state dict"),
    ):
        with pytest.raises(CheckpointError, match=match) as err:
            load_weights(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    cfg = load_config(
        ExperimentConfig,
        resolve_config("ibta", "digits_tiny"),
        [f"weights.digits_cnn={tmp_path / 'other.pt'}"],
    )
    from ibta.models import read_weights

    with pytest.raises(CheckpointError, match="do not fit model 'digits_cnn'"):
        build_model("digits_cnn", cfg, torch.device("cpu"), {}, read_weights(cfg))


def test_cli_refuses_crafted_weights_before_any_training(tmp_path, capsys):
    target = tmp_path / "pwned"
    torch.save({"x": CodeRunningPickle(target)}, tmp_path / "evil.pt")
    code = main(
        [
            "attack",
            "--config",
            "digits_tiny",
            f"weights.digits_cnn={tmp_path / 'evil.pt'}",
            f"--out={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "evil.pt" in err and len(err.strip().splitlines()) == 1
    assert not target.exists() and not (tmp_path / "digits_tiny").exists()


# ------------------------------------------------------------------------------------------ results tables
def _table(tmp_path: Path, rows: list[dict], header: list[str] = CSV_FIELDS) -> Path:
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


GOOD = {
    "mode": "untargeted",
    "source": "a",
    "victim": "b",
    "attack": "mi",
    "target": "",
    "success": "0.5",
    "n": "4",
}


@pytest.mark.parametrize(
    "bad, column",
    [
        ({"success": "high"}, "success"),
        ({"success": "1.5"}, "success"),
        ({"mode": "sideways"}, "mode"),
        ({"victim": ""}, "victim"),
        ({"target": "cat"}, "target"),
        ({"n": "-3"}, "n"),
    ],
)
def test_malformed_table_names_file_row_and_column(tmp_path, bad, column, capsys):
    path = _table(tmp_path, [GOOD, GOOD | bad])
    with pytest.raises(InputError, match=rf"results\.csv: row 2 \(line 3\), column '{column}'"):
        read_rows(path)
    assert main(["eval", "--csv", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "results.csv" in err and f"'{column}'" in err


def test_table_structure_errors(tmp_path, capsys):
    path = _table(tmp_path, [GOOD], header=["mode", "source", "victim"])
    with pytest.raises(InputError, match=r"header\) lacks the column\(s\) \['attack', 'target', 'success'\]"):
        read_rows(path)
    path.write_text(",".join(CSV_FIELDS) + "\n" + "untargeted,a,b\n")
    with pytest.raises(InputError, match=r"row 1 \(line 2\) has 3 columns"):
        read_rows(path)
    path.write_text(",".join(CSV_FIELDS) + "\n")
    assert main(["eval", "--csv", str(path)]) == 2
    assert "no rows" in capsys.readouterr().err
    assert main(["eval", "--csv", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ runs and CLI
@pytest.mark.slow
def test_run_experiment_digits_resumes(tmp_path):
    cfg = load_config(ExperimentConfig, resolve_config("ibta", "digits_tiny"), TINY + [f"out_dir={tmp_path}"])
    rows = run_experiment(cfg, progress=False)
    assert len(rows) == 8  # 2 attacks x (3 victims + white box)
    assert {r["attack"] for r in rows} == {"mi", "ibta_mi"}
    for r in rows:
        assert r["protocol"] == "all-source" and r["n"] == 12 and 0.0 <= r["success"] <= 1.0
        assert r["eps"] == pytest.approx(0.15) and r["steps"] == 2
    again = run_experiment(cfg, progress=False)
    assert len(again) == 8  # every cell was already in the CSV
    assert len(read_rows(tmp_path / "digits_tiny" / "results.csv")) == 8


def test_positional_base(model):
    from ibta import IBTA_TIFGSM, IBTAAttack

    assert isinstance(IBTAAttack(model, "ti"), IBTA_TIFGSM)


@pytest.mark.slow
def test_ablate_cli_one_value_each(tmp_path, capsys):
    args = ["ablate", "--config", "digits_tiny", "--no-progress", *TINY, "attacks=[ibta_mi]"]
    args += ["sweep_lam=[0.0]", "sweep_gamma=[0.5]", "sweep_sigma=[0.2]", f"--out={tmp_path}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lam=0 untargeted digits_cnn->digits_mlp ibta_mi" in out and "sigma=0.2" in out
    assert (tmp_path / "digits_tiny_gamma0.5" / "results.csv").is_file()


@pytest.mark.slow
def test_cli_attack_then_eval(tmp_path, capsys):
    assert main(["attack", "--config", "digits_tiny", "--no-progress", *TINY, f"--out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "| untargeted | digits_cnn | ibta_mi |" in out
    path = tmp_path / "digits_tiny" / "results.csv"
    assert main(["eval", "--csv", str(path)]) == 0
    assert "digits_mlp" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["show-config", "--config", "exp1_cnn", "attack.lam=1"]) == 0
    assert "lam: 1" in capsys.readouterr().out
    for argv, text in (
        (["show-config", "--config", "exp1_cnn", "nope=1"], "unknown config key"),
        (["attack", "--config", "exp1_cnn", "attack.eps=5"], "attack.eps=5.0: must be <= 1"),
        (["attack", "--config", "exp1_cnn", f"data_root={tmp_path / 'no_imagenet'}"], "no_imagenet"),
        (["attack", "--config", "digits_tiny", f"--out={tmp_path / 'f.txt'}"], "is a file"),
    ):
        (tmp_path / "f.txt").write_text("x")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_mine_cli_on_digits(capsys):
    args = ["mine", "--config", "digits_tiny", "--attack", "ibta_mi", *TINY]
    args += ["mine.steps=10", "mine.hidden=8", "mine.pool=2", "mine.eval_every=5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '"attack": "ibta_mi"' in out and "mi_nats" in out
