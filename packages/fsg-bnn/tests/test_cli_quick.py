import json
from pathlib import Path

import pytest
import torch

from fsg_bnn.cli import main
from fsg_bnn.quick import METHODS, build_claims, run_method
from fsg_bnn.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_config_loads():
    from fsg_bnn.config import ExperimentConfig
    from papers_shared.config import load_config

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert "cifar10_resnet20.yaml" in names and "cifar100_resnet56.yaml" in names
    for p in CONFIGS.glob("*.yaml"):
        cfg = load_config(ExperimentConfig, p)
        assert cfg.optim.method == "fsg"


@pytest.mark.slow
def test_cli_train_resume_and_eval(tmp_path, capsys):
    args = ["--config", str(CONFIGS / "smoke.yaml"), f"train.out_dir={tmp_path}", "--no-progress"]
    assert main(["train", *args]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (tmp_path / "fp" / "model.pt").is_file() and (tmp_path / "result.json").is_file()
    ckpts = sorted((tmp_path / "ckpt").glob("ckpt-*.pt"))
    assert ckpts
    assert main(["train", *args, "--resume"]) == 0  # finished run: resumes at its end
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == first
    assert main(["eval", "--config", str(CONFIGS / "smoke.yaml"), "--checkpoint", str(ckpts[-1])]) == 0
    assert "test_acc" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--config", str(CONFIGS / "smoke.yaml"), "bogus=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    cfg = str(CONFIGS / "cifar10_resnet20.yaml")
    assert main(["train", "--config", cfg, f"data.root={tmp_path}", f"train.out_dir={tmp_path}"]) == 2
    assert "CIFAR10 was not found" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert main(["methods"]) == 0
    assert "fsg" in capsys.readouterr().out.split()


def test_trainer_rejects_non_finite_loss():
    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train_step(torch.full((2, 3), float("inf")), torch.tensor([0, 1]))


def _metrics(acc, std, final=0.1, initial=1.0):
    runs = [{"losses": [initial, final], "final_loss": final, "initial_loss": initial}]
    return {"methods": {k: {"test_acc_mean": acc[k], "test_acc_std": std[k]} for k in acc}, "runs": runs}


def test_claims_follow_the_numbers():
    acc = {"STE": 95.0, "MultiFC": 95.0, "FSG-official": 96.0, "FSG-combined": 94.8}
    std = {"STE": 0.1, "MultiFC": 1.0, "FSG-official": 0.2, "FSG-combined": 0.3}
    claims = {c.claim: c.holds for c in build_claims(_metrics(acc, std))}
    assert list(claims.values()) == [True, True, True, False, True, True]
    acc["FSG-official"], std["FSG-official"] = 94.0, 2.0
    bad = build_claims(_metrics(acc, std, final=float("nan")))
    assert [c.holds for c in bad] == [False, False, True, False, False, False]


@pytest.mark.slow
def test_run_method_short():
    from fsg_bnn.data import digits_split
    from fsg_bnn.models import mlp

    data = digits_split(0)
    for label in ("STE", "FSG-official"):
        r = run_method(mlp(), METHODS[label], data, seed=0, steps=3, batch=16)
        assert len(r["losses"]) == 3 and 0.0 <= r["test_acc"] <= 100.0
