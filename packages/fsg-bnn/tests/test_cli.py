import json

import pytest
import torch

from fsg_bnn.cli import main
from fsg_bnn.config import ExperimentConfig, OptimConfig
from fsg_bnn.trainer import Trainer
from papers_shared.cli import list_configs, resolve_config
from papers_shared.config import ConfigError, load_config
from papers_shared.errors import CheckpointError
from papers_shared.testing import CodeRunningPickle, run_cli

PAPER = ["cifar10_resnet20", "cifar10_resnet20_sgd", "cifar10_resnet32", "cifar10_resnet44"]
PAPER += ["cifar100_resnet56", "cifar100_resnet56_bwn", "cifar100_resnet110"]


def test_every_shipped_config_loads_and_describes_itself():
    shipped = list_configs("fsg_bnn")
    assert set(PAPER) | {"quick", "smoke", "base_cifar"} <= set(shipped)
    for name, path in shipped.items():
        assert path.read_text().startswith("# "), name
        cfg = load_config(ExperimentConfig, resolve_config("fsg_bnn", name))
        assert cfg.optim.method == "fsg"
        if name in PAPER:  # paper configs run the official update and no approximation
            assert cfg.optim.update_mode == "official" and cfg.optim.hgs_length == 5
            assert cfg.optim.slow_net_refresh == 1  # the approximation is off


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.alpha=1.5", "alpha"),
        ("optim.lr=-1", "lr"),
        ("optim.lr=.nan", "finite"),
        ("optim.hgs_length=0", "hgs_length"),
        ("optim.method=adamw", "method"),
        ("optim.scan_backend=triton", "scan_backend"),
        ("model.arch=resnet21", "arch"),
        ("model.num_classes=100", "10 classes"),
        ("data.batch_size=0", "batch_size"),
        ("train.lr_gamma=2", "lr_gamma"),
        ("optim.betas=[0.9,1.0]", "betas"),
        ("bogus=1", "unknown config key"),
    ],
)
def test_bad_values_are_refused_when_built(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, resolve_config("fsg_bnn", "cifar10_resnet20"), [override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="swap_roles"):
        OptimConfig(slow_net="lstm", swap_roles=True)
    with pytest.raises(ConfigError, match="digits"):
        load_config(ExperimentConfig, None, ["data.dataset=digits"])


def test_show_config_and_list_configs(capsys):
    assert main(["show-config", "--config", "cifar10_resnet20", "optim.method=multifc"]) == 0
    assert "method: multifc" in capsys.readouterr().out
    assert main(["show-config", "--config", "cifar10_resnet20", "optim.alpha=2"]) == 2
    assert "optim.alpha" in capsys.readouterr().err
    assert main(["list-configs"]) == 0
    out = capsys.readouterr().out
    assert "cifar10_resnet20" in out and "quick" in out


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        text = capsys.readouterr().err.strip()
        assert "\n" not in text and "Traceback" not in text
        return text

    assert "unknown config key" in err(["train", "--config", "smoke", "bogus=1"])
    missing = tmp_path / "no-data"
    text = err(
        ["train", "--config", "cifar10_resnet20", f"data.root={missing}", "--out", str(tmp_path / "o")]
    )
    assert "CIFAR10" in text and "not found" in text
    assert "not found" in err(["train", "--config", str(tmp_path / "nope.yaml")])
    (tmp_path / "file").write_text("x")
    assert "is a file" in err(["train", "--config", "smoke", "--out", str(tmp_path / "file")])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a torch file")
    assert "damaged.pt" in err(["eval", "--config", "smoke", "--checkpoint", str(damaged)])
    assert "missing.pt" in err(["eval", "--config", "smoke", "--checkpoint", str(tmp_path / "missing.pt")])


def test_crafted_pickle_is_refused_by_every_loader(tmp_path, capsys):
    """Issue 15: ``fsg-bnn eval --checkpoint evil.pt`` executed code. Every loader of the package refuses
    it with one line naming the file, and nothing runs."""
    import fsg_bnn as fb
    from fsg_bnn.experiment import evaluate_checkpoint
    from papers_shared.checkpoints import CheckpointManager

    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"trainer": {"model": {"w": torch.zeros(1)}}, "x": CodeRunningPickle(target)}, evil)
    assert main(["eval", "--config", "smoke", "--checkpoint", str(evil)]) == 2
    text = capsys.readouterr().err.strip()
    assert "evil.pt" in text and "refused" in text and "\n" not in text
    cfg = load_config(ExperimentConfig, resolve_config("fsg_bnn", "smoke"))
    for load in (lambda: evaluate_checkpoint(cfg, evil), lambda: fb.load_fp_checkpoint(fb.resnet20(), evil)):
        with pytest.raises(CheckpointError, match="evil.pt"):
            load()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    evil.rename(folder / "ckpt-000000001.pt")
    with pytest.raises(CheckpointError, match="could be loaded"), pytest.warns(RuntimeWarning):
        CheckpointManager(folder).load_latest()
    assert not target.exists()


def test_console_script_crafted_pickle_end_to_end(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"x": CodeRunningPickle(target)}, tmp_path / "evil.pt")
    res = run_cli("fsg-bnn", ["eval", "--config", "smoke", "--checkpoint", tmp_path / "evil.pt"], timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "evil.pt" in res.stderr and not target.exists()


@pytest.mark.slow
def test_cli_train_resume_and_eval(tmp_path, capsys):
    args = ["--config", "smoke", "--out", str(tmp_path), "--no-progress"]
    assert main(["train", *args]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (tmp_path / "fp" / "model.safetensors").is_file() and (tmp_path / "result.json").is_file()
    ckpts = sorted((tmp_path / "ckpt").glob("ckpt-*.pt"))
    assert ckpts
    assert main(["train", *args, "--resume"]) == 0  # finished run: resumes at its end
    assert json.loads(capsys.readouterr().out) == first
    for weights in (ckpts[-1], tmp_path / "model.safetensors"):
        assert main(["eval", "--config", "smoke", "--checkpoint", str(weights)]) == 0
        assert "test_acc" in json.loads(capsys.readouterr().out)


def test_trainer_rejects_non_finite_loss():
    model = torch.nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train_step(torch.full((2, 3), float("inf")), torch.tensor([0, 1]))


@pytest.mark.slow
def test_damaged_own_pretraining_output_is_rebuilt(tmp_path):
    from fsg_bnn.experiment import run_experiment

    cfg = load_config(ExperimentConfig, resolve_config("fsg_bnn", "smoke"), [f"train.out_dir={tmp_path}"])
    fp = tmp_path / "fp" / "model.safetensors"
    fp.parent.mkdir(parents=True)
    fp.write_bytes(b"damaged")
    with pytest.warns(RuntimeWarning, match="pretraining again"):
        run_experiment(cfg, progress=False)
    assert fp.stat().st_size > 1000
    user = load_config(
        ExperimentConfig, resolve_config("fsg_bnn", "smoke"), [f"train.pretrained={tmp_path / 'x.pt'}"]
    )
    (tmp_path / "x.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="x.pt"):
        run_experiment(user, progress=False)
