import json
from pathlib import Path

import pytest

from g2g_fscil.cli import main
from g2g_fscil.config import ExperimentConfig, G2GConfig, QuickConfig, preset
from g2g_fscil.quick import build_claims, quick_reproduction
from papers_shared.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "pretrain_epochs=1",
    "model.meta_iters=2",
    "model.meta_ways=3",
    "model.meta_queries=2",
    "model.retrain_iter=1",
    "model.feat_dim=8",
]


def test_every_config_loads():
    for f in sorted(CONFIGS.glob("*.yaml")):
        cls = QuickConfig if f.stem == "quick" else ExperimentConfig
        load_config(cls, f)
    c = load_config(ExperimentConfig, CONFIGS / "ablation_node_only.yaml")
    assert c.model.alpha == 1.0 and c.base_classes == 60 and c.model.backbone == "resnet12"
    assert preset("cub200").model.backbone == "resnet18"


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(ExperimentConfig, None, ["model.alpah=0.3"])
    with pytest.raises(ConfigError, match="alpha"):
        G2GConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="interaction"):
        G2GConfig(interaction="g3g")
    with pytest.raises(ConfigError, match="dataset"):
        ExperimentConfig(dataset="mnist")
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExperimentConfig, "missing.yaml")


def test_cli_run_eval_show_config(tmp_path, capsys):
    out = str(tmp_path / "runs")
    rc = main(["run", "--config", str(CONFIGS / "digits.yaml"), "--quiet", f"out_dir={out}", *TINY])
    assert rc == 0
    res = tmp_path / "runs" / "digits" / "g2g" / "seed0"
    data = json.loads((res / "results.json").read_text())
    assert len(data["accs"]) == 3 and data["method"] == "g2g"
    capsys.readouterr()
    rc = main(
        ["eval", "--config", str(CONFIGS / "digits.yaml"), "--checkpoint", str(res / "model.pt"), *TINY]
    )
    assert rc == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["sessions"] == 3
    # the final model reproduces the last-session accuracy of the run exactly
    assert ev["accs"][-1] == pytest.approx(data["accs"][-1], abs=1e-9)
    assert main(["show-config", "--config", str(CONFIGS / "cifar100.yaml"), "model.alpha=0.7"]) == 0
    assert "alpha: 0.7" in capsys.readouterr().out


def test_cli_ablate_shares_pretraining(tmp_path):
    out = str(tmp_path / "runs")
    args = ["ablate", "--config", str(CONFIGS / "digits.yaml"), "--quiet", "--variants", "v2v,full"]
    assert main([*args, f"out_dir={out}", *TINY]) == 0
    res = json.loads((tmp_path / "runs" / "digits" / "ablation" / "results.json").read_text())
    assert set(res) == {"v2v", "full"}
    assert (
        res["v2v"][0]["config"]["interaction"] == "v2v" and res["full"][0]["config"]["interaction"] == "g2g"
    )
    assert (tmp_path / "runs" / "digits" / "ablation" / "seed0" / "pretrain.pt").is_file()
    assert (
        main(["metatrain", "--config", str(CONFIGS / "digits.yaml"), "--quiet", f"out_dir={out}", *TINY]) == 0
    )
    assert (tmp_path / "runs" / "digits" / "g2g" / "seed0" / "metatrain.pt").is_file()


def test_cli_clear_errors(tmp_path, capsys):
    rc = main(
        ["run", "--config", str(CONFIGS / "cifar100.yaml"), f"data_root={tmp_path / 'nope'}", "--quiet"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "CIFAR100" in err and "nope" in err
    rc = main(["run", "--config", str(CONFIGS / "cub200.yaml"), f"data_root={tmp_path}", "--quiet"])
    assert rc == 2 and "CUB-200-2011" in capsys.readouterr().err
    rc = main(["run", "--config", str(CONFIGS / "imagenet_r.yaml"), f"data_root={tmp_path / 'r'}", "--quiet"])
    assert rc == 2 and "Image folder" in capsys.readouterr().err
    rc = main(["eval", "--config", str(CONFIGS / "digits.yaml"), "--checkpoint", str(tmp_path / "x.pt")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
    assert main(["run", "--config", str(CONFIGS / "digits.yaml"), "bogus=1"]) == 2
    assert main(["ablate", "--config", str(CONFIGS / "digits.yaml"), "--variants", "v2v,magic"]) == 2


def _summary(g2g_avg, v2v_avg, coll_lgp, coll_no):
    base = {"pd": 5.0, "collapse": 0.5, "backbone_unchanged": True}
    return {
        "ncm": {**base, "avg": 80.0, "pd": 10.0},
        "v2v": {**base, "avg": v2v_avg},
        "g2g": {**base, "avg": g2g_avg, "collapse": coll_lgp},
        "g2g_no_lgp": {**base, "avg": 85.0, "collapse": coll_no},
    }


def test_claims_computed_from_numbers():
    ok = {c.claim[:3]: c.holds for c in build_claims(_summary(90.0, 90.5, 0.2, 0.4))}
    assert ok["(a)"] and ok["(b)"]
    bad = {c.claim[:3]: c.holds for c in build_claims(_summary(88.0, 90.5, 0.6, 0.4))}
    assert not bad["(a)"] and not bad["(b)"]


def test_quick_reproduction_tiny_budget(tmp_path):
    qc = QuickConfig(
        seeds=[0], pretrain_epochs=1, meta_iters=2, retrain_iter=1, variants=["v2v", "g2g_no_lgp", "g2g"]
    )
    res = quick_reproduction(tmp_path, cfg=qc)
    names = {c.claim[:3] for c in res.claims}
    assert {"(a)", "(b)", "(c)"} <= names
    s = res.metrics["summary"]
    a = next(c for c in res.claims if c.claim.startswith("(a)"))
    assert a.method_value == s["g2g"]["collapse"] and a.baseline_value == s["g2g_no_lgp"]["collapse"]
    assert a.holds == (s["g2g"]["collapse"] < s["g2g_no_lgp"]["collapse"])
    for p in res.plots:
        assert (tmp_path / p).is_file() and p.startswith("g2g-fscil_")


def test_quick_variants_and_bad_variant():
    from g2g_fscil.quick import variant_config

    base = G2GConfig(backbone="tiny")
    assert variant_config(base, "v2v_mode3") == ("v2v", base)
    assert variant_config(base, "g2g_no_lgp")[1].lgp is None
    assert variant_config(base, "g2g_anti_collapse")[1].lgp == "anti_collapse"
    with pytest.raises(ConfigError, match="unknown quick variants"):
        QuickConfig(variants=["v2v", "magic"])
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "magic")
