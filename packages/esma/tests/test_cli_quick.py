import csv
import json

import pytest
import torch

from esma.cli import main
from esma.config import EsmaExperimentConfig, QuickConfig
from esma.quick import aggregate, build_claims, quick_reproduction, storage_ratio
from papers_shared.config import ConfigError, load_config


def _tiny(tmp_path):
    return [
        "--config",
        "digits_tiny",
        f"out_dir={tmp_path}",
        "digits_size=8",
        "digits_source_epochs=1",
        "pretrain.steps=3",
        "train.max_steps=2",
        "ttp.max_steps=1",
        "eval.batch_size=512",
    ]


@pytest.mark.slow
def test_cli_pipeline_on_digits(tmp_path, capsys):
    args = _tiny(tmp_path)
    assert main(["screen", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["q"] == 5 and len(out["selected_per_class"]) == 10
    run = tmp_path / "digits_tiny"
    assert main(["train", *args[:2], "--bank", str(run / "bank.pt"), *args[2:]]) == 0
    assert (run / "stage1.pt").is_file() and (run / "stage2" / "generator.pt").is_file()
    # resume continues from the checkpoint (2 steps already done -> nothing left at max_steps=2)
    assert main(["train", *args[:2], "--bank", str(run / "bank.pt"), "--resume", *args[2:]]) == 0
    capsys.readouterr()
    assert main(["eval", *args[:2], "--ckpt", str(run / "stage2" / "generator.pt"), *args[2:]]) == 0
    table = json.loads(capsys.readouterr().out.split("per-target rows:")[0])
    assert {r["victim"] for r in table} == {"tiny_cnn", "tiny_cnn_wide", "tiny_mlp"}
    with open(run / "transfer.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and {"source", "victim", "target", "success"} <= set(rows[0])
    assert all(r["protocol"] == "ttp-sub-source" for r in rows)
    from esma.data import digits_split

    yte = digits_split(8)["test"][1]
    assert all(
        int(r["n"]) == int((yte != int(r["target"])).sum()) for r in rows
    )  # sub-source: drop own class
    assert main(["ttp-train", *args[:2], "--target", "3", *args[2:]]) == 0
    assert (run / "ttp_3" / "netG.pth").is_file()
    capsys.readouterr()
    assert main(["es-iterative", *args[:2], "es.steps=2", *args[2:]]) == 0
    summary = json.loads(capsys.readouterr().out.split("per-target rows:")[0])
    assert set(summary) == {"easy", "random", "hard", "ce"}
    with open(run / "es_mi.csv") as fh:
        es_rows = list(csv.DictReader(fh))
    assert len(es_rows) == 10 * 4 * 3 and all(int(r["n"]) == 20 for r in es_rows)


def test_cli_errors_and_show_config(tmp_path, capsys):
    assert main(["show-config", "--config", "esma_vgg19bn"]) == 0
    shown = capsys.readouterr().out
    assert "source: vgg19_bn" in shown and "legacy_padding_idx: true" in shown
    assert main(["show-config", "--config", "esma_resnet50", "train.epochz=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["show-config", "--config", "no_such_config"]) == 2
    assert "not found" in capsys.readouterr().err
    rc = main(
        ["screen", "--config", "esma_resnet50", f"imagenet_root={tmp_path / 'imagenet'}", "pretrained=false"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "ImageNet train split was not found" in err and "image-net.org" in err
    assert main(["pretrain", "--config", "digits_tiny", "--bank", str(tmp_path / "nobank.pt")]) == 2
    assert "esma screen" in capsys.readouterr().err
    assert main(["eval", "--config", "digits_tiny", f"out_dir={tmp_path}", "digits_source_epochs=1"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_paper_configs_load():
    for name, src in [("esma_resnet50", "resnet50"), ("esma_resnet152", "resnet152"), ("esma_vgg19bn", "vgg19_bn"),
                      ("esma_densenet121", "densenet121"), ("ttp_resnet50", "resnet50"),
                      ("es_iterative_resnet50", "resnet50")]:  # fmt: skip
        cfg = load_config(EsmaExperimentConfig, f"packages/esma/configs/{name}.yaml")
        assert cfg.name == name and cfg.source == src
        assert cfg.class_ids == [24, 99, 245, 344, 471, 555, 661, 701, 802, 919]
        assert cfg.screening.q == 2 and cfg.pretrain.steps == 15000 and cfg.train.epochs == 300
        assert cfg.train.eps_train == pytest.approx(10 / 255) and cfg.eval.eps == pytest.approx(16 / 255)
        assert cfg.generator.legacy_padding_idx and cfg.pretrain.legacy_accumulate_grads
        assert cfg.train.legacy_double_normalize
    d = EsmaExperimentConfig()
    assert not d.generator.legacy_padding_idx and not d.pretrain.legacy_accumulate_grads
    assert not d.train.legacy_double_normalize
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(EsmaExperimentConfig, None, ["screening.qq=3"])
    q = load_config(QuickConfig, "packages/esma/configs/quick.yaml")
    assert q.seeds == [0, 1, 2]


def test_pretrained_weights_missing_offline_gives_clear_error(monkeypatch, tmp_path):
    from esma.experiment import build_source

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cfg = load_config(EsmaExperimentConfig, "packages/esma/configs/esma_resnet50.yaml")
    with pytest.raises(FileNotFoundError, match="not available offline"):
        build_source(cfg)


def test_claims_are_computed_from_numbers():
    cfg = QuickConfig(n_bins=3)
    m = {"gap_bin0": 0.1, "gap_bin2": 0.5, "agree_bin0": 99.0, "agree_bin2": 80.0, "mi_easy_victims": 30.0,
         "mi_random_victims": 25.0, "mi_hard_victims": 26.0, "gen_easy_victims": 12.0, "gen_hard_victims": 12.0}  # fmt: skip
    st = storage_ratio()
    assert st["esma_params"] == 4_397_635 and st["ttp_params"] == 7_841_411
    assert st["ratio_pct"] == pytest.approx(100 * 4_397_635 / 78_414_110)
    c = {x.method: x for x in build_claims(m, cfg, st)}
    assert c["gap_bin0"].holds and c["agree_bin0"].holds and c["mi_easy_victims"].holds
    assert not c["mi_random_victims"].holds  # 25 < 26
    assert not c["gen_easy_victims"].holds  # strict >
    assert c["esma / 10 TTP (%)"].holds
    mean, std = aggregate([{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    assert mean == {"a": 2.0, "b": 2.0} and std["a"] == pytest.approx(2**0.5) and std["b"] == 0.0


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    cfg = QuickConfig(seeds=[0], model_epochs=2, attack_steps=3, attack_images=3, gen_steps=2, gen_batch=16,
                      pretrain_steps=2, n_bins=3)  # fmt: skip
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert res.package == "esma" and len(res.claims) == 6
    assert all((tmp_path / p).is_file() for p in res.plots)
    m = res.metrics["mean"]
    for c in res.claims:
        if c.method in m:
            assert c.method_value == pytest.approx(m[c.method])
    assert 0 <= m["gen_easy_victims"] <= 100 and 0 <= m["mi_ce_source"] <= 100
