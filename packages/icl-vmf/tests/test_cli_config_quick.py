import json
from pathlib import Path

import pytest

from icl_vmf.cli import main
from icl_vmf.config import ExperimentConfig
from icl_vmf.quick import QUICK_CONFIG, build_claims, quick_config
from papers_shared.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(ExperimentConfig, path)
    assert cfg.methods and cfg.system1.hidden_dim < cfg.system1.memory_dim


def test_paper_configs_follow_the_code_defaults():
    c10 = load_config(ExperimentConfig, CONFIGS / "seq_cifar10.yaml")
    assert (c10.data.num_tasks, c10.train.buffer_size, c10.train.reset_optimizers_each_task) == (
        5,
        500,
        False,
    )
    assert (c10.loss.kappa, c10.loss.lmbda, c10.loss.delta, c10.train.em_steps, c10.train.lr) == (
        1.0,
        0.1,
        0.01,
        60,
        1e-4,
    )
    imr = load_config(ExperimentConfig, CONFIGS / "seq_imagenet_r_buf200.yaml")
    assert (
        imr.data.num_tasks,
        imr.train.buffer_size,
        imr.train.reset_optimizers_each_task,
        imr.augment.hflip,
    ) == (10, 200, True, False)
    s2 = load_config(ExperimentConfig, CONFIGS / "system2_cifar100_llava15_7b.yaml")
    assert s2.system2.enabled and s2.system2.k == 5 and s2.system1.hidden_dim == 768


def test_quick_yaml_matches_the_code():
    assert load_config(ExperimentConfig, CONFIGS / "quick_digits.yaml") == quick_config()
    assert QUICK_CONFIG["seeds"] == [0, 1, 2]


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(ExperimentConfig, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="unknown method"):
        load_config(ExperimentConfig, None, ["methods=[icl,foo]"])
    with pytest.raises(ConfigError, match="system2.backend"):
        load_config(ExperimentConfig, None, ["system2.backend=gpt"])
    with pytest.raises(ConfigError, match="hidden_dim"):
        load_config(ExperimentConfig, None, ["system1.hidden_dim=2048"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExperimentConfig, CONFIGS / "nope.yaml")


@pytest.mark.slow
def test_cli_train_smoke_and_eval_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            str(CONFIGS / "smoke_digits.yaml"),
            "--out",
            str(out),
            "methods=[icl,er]",
            "checkpoint=true",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "results.json").read_text())
    assert set(rep["summary"]) == {"icl", "er"}
    assert rep["summary"]["icl"]["final_class_il_with_system2"] is not None
    assert (out / "config.yaml").is_file() and (out / "runs" / "icl-seed0.json").is_file()
    capsys.readouterr()
    rc = main(
        [
            "eval",
            "--config",
            str(CONFIGS / "smoke_digits.yaml"),
            "--checkpoint",
            str(out / "checkpoints" / "icl-seed0"),
            "system2.enabled=false",
        ]
    )
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    icl = next(r for r in rep["runs"] if r["method"] == "icl")
    assert ev["after_task"] == 4 and ev["class_il"] == pytest.approx(icl["class_il"][-1])


def test_cli_reports_missing_data_and_bad_keys(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIGS / "seq_cifar10.yaml"),
                "--out",
                str(tmp_path),
                f"data.root={tmp_path}",
            ]
        )
        == 2
    )
    assert "cifar-10-batches-py" in capsys.readouterr().err
    assert main(["train", "--config", str(CONFIGS / "smoke_digits.yaml"), "trian.lr=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert (
        main(["eval", "--config", str(CONFIGS / "smoke_digits.yaml"), "--checkpoint", str(tmp_path / "none")])
        == 2
    )
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIGS / "seq_imagenet_r.yaml"),
                "--out",
                str(tmp_path / "out"),
                f"data.root={tmp_path / 'imr'}",
            ]
        )
        == 2
    )
    assert "Image folder" in capsys.readouterr().err


def test_show_config_prints_resolved_yaml(capsys):
    assert main(["show-config", "--config", str(CONFIGS / "seq_cifar100_buf200.yaml"), "loss.kappa=0.5"]) == 0
    out = capsys.readouterr().out
    assert "buffer_size: 200" in out and "kappa: 0.5" in out


def _metrics(**over):
    m = {
        "final_class_il": {"linear": 0.70, "er": 0.75, "icl": 0.80, "icl+oracle_system2": 0.85},
        "forgetting": {"linear": 0.20, "icl": 0.10},
        "icl_system1_acc_flagged": 0.40,
        "icl_system1_acc_unflagged": 0.85,
        "tiny_llava": {"hard": 10, "routed": 10},
    }
    m.update(over)
    return m


def test_claims_are_computed_from_the_numbers():
    claims = build_claims(_metrics())
    assert len(claims) == 6 and all(c.holds for c in claims)
    flipped = build_claims(
        _metrics(
            final_class_il={"linear": 0.80, "er": 0.75, "icl": 0.70, "icl+oracle_system2": 0.70},
            forgetting={"linear": 0.1, "icl": 0.2},
            icl_system1_acc_flagged=0.80,
            tiny_llava={"hard": 10, "routed": 3},
        )
    )
    assert not any(c.holds for c in flipped)
    near = build_claims(_metrics(icl_system1_acc_flagged=0.80))  # only 5 points lower: not "clearly"
    assert [c.holds for c in near] == [True, True, True, False, True, True]
    assert build_claims(_metrics(tiny_llava=None))[-1].claim.startswith("ICL forgets")


def test_readme_api_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # the package's own README example
    pred, info = scope["pred"], scope["info"]
    assert pred.shape == (32,) and info.hard.shape == (32,)
    assert bool((pred[~info.hard] == info.system1_pred[~info.hard]).all())  # unflagged keep System1
