"""The command line through its error boundary, and every loader of a file a user hands us."""

import json
from pathlib import Path

import pytest
import torch

from icl_vmf.cli import main
from icl_vmf.config import ExperimentConfig
from icl_vmf.data import build_stream
from icl_vmf.encoders import prepare_encoder
from icl_vmf.experiment import load_trained
from icl_vmf.learner import build_learner
from icl_vmf.trainer import run_stream
from papers_shared.checkpoints import CheckpointManager, save_safetensors
from papers_shared.config import load_config
from papers_shared.errors import CheckpointError
from papers_shared.testing import CodeRunningPickle


def _evil(path: Path, target: Path) -> Path:
    torch.save({"learner": {"module": {}}, "step": 0, "x": CodeRunningPickle(target)}, path)
    return path


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_unknown_key_and_bad_value_exit_2(capsys):
    assert main(["show-config", "--config", "smoke_digits", "trian.lr=1"]) == 2
    _one_line_error(capsys, "unknown config key")
    assert main(["show-config", "--config", "smoke_digits", "train.lr=-1"]) == 2
    _one_line_error(capsys, "train.lr")
    assert main(["train", "--config", "smoke_digits", "loss.kappa=nan"]) == 2
    _one_line_error(capsys, "kappa")


def test_show_config_prints_resolved_yaml(capsys):
    assert main(["show-config", "--config", "seq_cifar100_buf200", "loss.kappa=0.5", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "buffer_size: 200" in out and "kappa: 0.5" in out and "- 7" in out


def test_missing_datasets_exit_2(tmp_path, capsys):
    args = ["--out", str(tmp_path / "o"), f"data.root={tmp_path / 'missing'}"]
    assert main(["train", "--config", "seq_cifar10", *args]) == 2
    _one_line_error(capsys, "cifar-10-batches-py")
    assert main(["train", "--config", "seq_imagenet_r", *args]) == 2
    _one_line_error(capsys, "missing")


def test_out_pointing_at_a_file_exits_2_before_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--config", "smoke_digits", "--out", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, "is a file")


def test_eval_refuses_crafted_pickles_and_damaged_files(tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = _evil(tmp_path / "evil.pt", target)
    assert main(["eval", "--config", "smoke_digits", "--checkpoint", str(evil)]) == 2
    _one_line_error(capsys, "evil.pt", "refused")
    folder = tmp_path / "ckpts"
    folder.mkdir()
    _evil(folder / "ckpt-000000004.pt", target)
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint"):
        assert main(["eval", "--config", "smoke_digits", "--checkpoint", str(folder)]) == 2
    _one_line_error(capsys, "could be loaded")
    fake = tmp_path / "w.safetensors"
    fake.write_bytes(evil.read_bytes())  # a pickle renamed: not safetensors
    assert main(["eval", "--config", "smoke_digits", "--checkpoint", str(fake)]) == 2
    _one_line_error(capsys, "w.safetensors")
    (tmp_path / "torn.pt").write_bytes(b"\x80\x02garbage")
    assert main(["eval", "--config", "smoke_digits", "--checkpoint", str(tmp_path / "torn.pt")]) == 2
    _one_line_error(capsys, "torn.pt")
    assert main(["eval", "--config", "smoke_digits", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    _one_line_error(capsys, "none.pt")
    assert not target.exists()


def test_resume_refuses_a_crafted_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config()
    data = build_stream(cfg.data)
    enc = prepare_encoder(cfg, data, 0, torch.device("cpu"))
    target = tmp_path / "pwned"
    (tmp_path / "c").mkdir()
    _evil(tmp_path / "c" / "ckpt-000000001.pt", target)
    learner = build_learner("icl", cfg, data, enc, "cpu", 0)
    with (
        pytest.raises(CheckpointError, match="could be loaded"),
        pytest.warns(RuntimeWarning, match="refused"),
    ):
        run_stream(learner, data, cfg, 0, checkpoint_dir=tmp_path / "c", resume=True)
    assert not target.exists()


def test_weights_from_another_config_or_method_are_refused(tmp_path, tiny_config):
    cfg = tiny_config(methods=["icl", "er"])
    data = build_stream(cfg.data)
    enc = prepare_encoder(cfg, data, 0, torch.device("cpu"))
    learner = build_learner("er", cfg, data, enc, "cpu", 0)
    tensors, meta = learner.export_weights(seed=0)
    save_safetensors(tensors, tmp_path / "er.safetensors", meta)
    with pytest.raises(CheckpointError, match="--method er"):
        load_trained(cfg, tmp_path / "er.safetensors", method="icl", data=data, encoder=enc)
    save_safetensors({"x": torch.zeros(1)}, tmp_path / "foreign.safetensors", {"format": '"other"'})
    with pytest.raises(CheckpointError, match="not an icl-vmf weights file"):
        load_trained(cfg, tmp_path / "foreign.safetensors", data=data, encoder=enc)
    tensors["head.weight"] = torch.zeros(3, 3)
    save_safetensors(tensors, tmp_path / "bad.safetensors", meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_trained(cfg, tmp_path / "bad.safetensors", data=data, encoder=enc)


@pytest.mark.slow
def test_train_writes_safetensors_that_eval_reproduces(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "smoke_digits", "--out", str(out), "--no-progress",
                 "methods=[icl,icl_mix,er]", "checkpoint=true"]) == 0  # fmt: skip
    rep = json.loads((out / "results.json").read_text())
    assert set(rep["summary"]) == {"icl", "icl_mix", "er"}
    assert rep["summary"]["icl"]["final_class_il_with_system2"] is not None
    assert (out / "config.yaml").is_file() and (out / "runs" / "icl-seed0.json").is_file()
    capsys.readouterr()
    for method in ("icl", "icl_mix", "er"):
        run = next(r for r in rep["runs"] if r["method"] == method)
        assert main(["eval", "--config", "smoke_digits", "--checkpoint",
                     str(out / "weights" / f"{method}-seed0.safetensors"), "system2.enabled=false"]) == 0  # fmt: skip
        ev = json.loads(capsys.readouterr().out)
        assert ev["method"] == method and ev["after_task"] == 4
        assert ev["class_il"] == pytest.approx(run["class_il"][-1])
    # the training checkpoint (optimizers, buffer) gives the same table
    assert (
        main(["eval", "--config", "smoke_digits", "--checkpoint", str(out / "checkpoints" / "icl-seed0")])
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    icl = next(r for r in rep["runs"] if r["method"] == "icl")
    assert ev["class_il"] == pytest.approx(icl["class_il"][-1])
    state = CheckpointManager(out / "checkpoints" / "icl-seed0").load_latest(restore_rng=False)
    assert not any(".vit." in f".{k}" for k in state["learner"]["module"])  # frozen ViT not stored


def test_list_configs_and_help(capsys):
    assert main(["list-configs"]) == 0
    assert "quick" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["show-config", "--help"])
    out = capsys.readouterr().out
    assert "loss.mix_replay" in out and "train.em_index: Literal['epoch', 'task']" in out


def test_readme_api_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # the package's own README example
    pred, info = scope["pred"], scope["info"]
    assert pred.shape == (32,) and info.hard.shape == (32,)
    assert bool((pred[~info.hard] == info.system1_pred[~info.hard]).all())  # unflagged keep System1


def test_quick_config_is_the_shipped_yaml():
    from icl_vmf.quick import quick_config
    from papers_shared.cli import resolve_config

    assert quick_config() == load_config(ExperimentConfig, resolve_config("icl_vmf", "quick"))
    assert quick_config([3]).seeds == [3]
