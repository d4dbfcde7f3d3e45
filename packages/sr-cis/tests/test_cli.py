import json
from pathlib import Path

import pytest
import torch

from papers_shared.config import ConfigError, load_config
from papers_shared.testing import CodeRunningPickle
from sr_cis.cli import main
from sr_cis.config import ExperimentConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_all_shipped_configs_parse():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert len(paths) >= 12
    for p in paths:
        load_config(ExperimentConfig, p)
    cfg = load_config(ExperimentConfig, f"{CONFIGS}/domainnet_5t_fewshot5.yaml")
    assert cfg.system.small.lora.r == 30 and cfg.data.shots == 5 and not cfg.system.stm.train_head
    assert (
        load_config(ExperimentConfig, None, ["system.restructure.period=end"]).system.restructure.period
        == "end"
    )


@pytest.mark.parametrize(
    "override, match",
    [
        ("system.stm.epoch=3", "unknown config key"),
        ("system.stm.lr=-1", "lr"),
        ("system.stm.lr=nan", "finite"),
        ("system.caoad.route_share=1.5", "route_share"),
        ("system.caoad.score=entropy", "score"),
        ("system.restructure.period=sometimes", "period"),
        ("system.restructure.period=0", "period"),
        ("data.num_tasks=200", "100-class cifar100 cannot be split into 200 tasks"),
        ("methods=[sr_cis,l2p]", "unknown"),
        ("system.small.tiny.image_size=15", "multiple of patch_size"),
        ("pretrain_epochs=3", "tiny random ViT"),
    ],
)
def test_bad_config_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, f"{CONFIGS}/cifar100_10t.yaml", [override])


def test_corpus_replay_needs_a_corpus():
    with pytest.raises(ConfigError, match="pre-training corpus"):
        load_config(ExperimentConfig, None, ["system.generator.kind=gaussian"])


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        e = capsys.readouterr().err.strip()
        assert "\n" not in e and "Traceback" not in e
        return e

    assert main(["show-config", "--config", "imagenet_r_10t", "system.stm.epochs=3"]) == 0
    assert "epochs: 3" in capsys.readouterr().out
    assert "unknown config key" in err(["show-config", "--config", "cifar100_10t", "bogus=1"])
    assert "CIFAR100" in err(
        ["train", "--config", "cifar100_10t", "--out", str(tmp_path), f"data.root={tmp_path}/x"]
    )
    assert "not found" in err(
        ["eval", "--config", "digits_smoke", "--state", str(tmp_path / "none.safetensors")]
    )
    (tmp_path / "file").write_text("x")
    assert "is a file" in err(["train", "--config", "digits_smoke", "--out", str(tmp_path / "file")])
    csv = tmp_path / "t.csv"
    csv.write_text("method,dataset,final_acc,avg_acc\ninflora,cifar100,86.5,91.7\n")
    assert main(["import-table", str(csv)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["final_acc"] == 86.5
    csv.write_text("method,dataset,final_acc\ninflora,cifar100,86.5\nl2p,cifar100,abc\n")
    assert "row 2, column 'final_acc'" in err(["import-table", str(csv)])
    csv.write_text("method,dataset\ninflora,cifar100\n")
    assert "row 1 has no 'final_acc'" in err(["import-table", str(csv)])


def test_crafted_pickle_through_the_cli(tmp_path, capsys):
    torch.save({"task": 0, "system": CodeRunningPickle(tmp_path / "pwned")}, tmp_path / "evil.pt")
    assert main(["eval", "--config", "digits_smoke", "--state", str(tmp_path / "evil.pt")]) == 2
    e = capsys.readouterr().err
    assert "refused" in e and "evil.pt" in e and "\n" not in e.strip()
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert main(["eval", "--config", "digits_smoke", "--state", str(tmp_path / "bad.safetensors")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_offline_hub_model_gives_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rc = main(["train", "--config", "digits_smoke", "--out", str(tmp_path), "pretrain_epochs=0",
               "system.small.model_id=google/vit-base-patch16-224-in21k", "system.generator.gaussian_source=task"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "vit-base-patch16-224-in21k" in err


def test_sdxl_config_without_diffusers_is_clear(tmp_path, capsys):
    try:
        import diffusers  # noqa: F401

        pytest.skip("diffusers is installed; the missing-extra error cannot be triggered")
    except ImportError:
        pass
    rc = main(["train", "--config", "digits_smoke", "--out", str(tmp_path), "system.generator.kind=sdxl"])
    assert rc == 2 and "sr-cis[diffusion]" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_eval_and_resume(tmp_path, capsys):
    rc = main(["train", "--config", "digits_smoke", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "digits_smoke" / "results.json").read_text())
    assert set(res) == {"sr_cis", "seq_lora"}
    r = res["sr_cis"]
    assert r["tasks_done"] == 2 and len(r["matrix_acc"]) == 2 and r["restructures"][0]["new"] == "ltm_1"
    ckpt = tmp_path / "digits_smoke" / "sr_cis" / "ckpt"
    capsys.readouterr()
    state = ckpt / json.loads((ckpt / "latest.json").read_text())["file"]
    assert main(["eval", "--config", "digits_smoke", "--state", str(state)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert abs(ev["acc_fast"] - r["final_acc_fast"]) < 1e-6  # same memory, same seeded 100-sample subset
    # resume: nothing left to train, the stored rows come back
    assert main(["train", "--config", "digits_smoke", "--out", str(tmp_path), "--resume"]) == 0
    res2 = json.loads((tmp_path / "digits_smoke" / "results.json").read_text())
    assert res2["sr_cis"]["final_acc"] == r["final_acc"]
