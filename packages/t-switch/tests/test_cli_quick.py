import json

import pytest
import torch

from papers_shared.config import ConfigError, load_config
from t_switch.cli import main
from t_switch.config import ExperimentConfig, QuickConfig
from t_switch.quick import build_claims, quick_reproduction


def test_compress_and_report(tmp_path, tiny, capsys):
    from papers_shared.checkpoints import save_safetensors

    pre, fts = tiny
    save_safetensors(pre.state_dict(), tmp_path / "pre.safetensors")
    args = []
    for t, m in fts.items():
        torch.save(m.state_dict(), tmp_path / f"{t}.pt")
        args.append(f"{t}={tmp_path / f'{t}.pt'}")
    out = tmp_path / "sw.safetensors"
    rc = main(
        [
            "compress",
            "--pretrained",
            str(tmp_path / "pre.safetensors"),
            "--finetuned",
            *args,
            "--out",
            str(out),
            "drop_ratio=0.7",
        ]
    )
    assert rc == 0 and out.is_file()
    rep = json.loads(capsys.readouterr().out.split("switch file:")[0])
    assert rep["num_tasks"] == 3 and 0 < rep["density"] < 0.5
    assert main(["report", str(out)]) == 0
    assert (
        main(
            [
                "compress",
                "--pretrained",
                str(tmp_path / "pre.safetensors"),
                "--finetuned",
                *args,
                "--out",
                str(out),
                "drop_rato=0.7",
            ]
        )
        == 2
    )
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.slow
def test_run_offline_gives_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(
        [
            "run",
            "--config",
            "packages/t-switch/configs/vit_b32.yaml",
            f"out_dir={tmp_path}",
            "pretrained=nobody/not-cached-model",
        ]
    )
    assert rc == 2
    assert "not in the local HF cache" in capsys.readouterr().err


def test_configs_load_and_reject_unknown_keys():
    for name in ("vit_b32", "vit_l14", "vit_b32_lora", "roberta_glue"):
        cfg = load_config(ExperimentConfig, f"packages/t-switch/configs/{name}.yaml")
        assert cfg.name == name
    lora = load_config(ExperimentConfig, "packages/t-switch/configs/vit_b32_lora.yaml")
    assert lora.switch.drop_ratio == 0.4 and lora.kind == "vit_lora" and lora.auto.k == 10
    glue = load_config(ExperimentConfig, "packages/t-switch/configs/roberta_glue.yaml", ["auto.k=7"])
    assert glue.auto.mode == "hard" and glue.auto.k == 7 and glue.eval_subset == 500
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(ExperimentConfig, None, ["switch.drop=0.3"])
    with pytest.raises(ConfigError):
        load_config(ExperimentConfig, "packages/t-switch/configs/missing.yaml")
    q = load_config(QuickConfig, "packages/t-switch/configs/quick.yaml")
    assert q.seeds == [0, 1, 2]


def test_claims_are_computed_from_numbers():
    cfg = QuickConfig(ratios=[0.0, 0.5, 0.6])
    m = {"individual": 94.0, "t_switch@0.0": 92.0, "t_switch@0.5": 93.5, "t_switch@0.6": 93.0, "sparse@0.5": 93.0,
         "sparse@0.6": 94.0, "task_arithmetic_best": 85.0, "auto_switch": 89.0, "storage_pct_fp32": 3.9}  # fmt: skip
    claims = {c.claim: c for c in build_claims(m, cfg)}
    assert claims["T-Switch(r=0.5) within 2 points of Individual"].holds
    assert claims["binarized >= sparse-only - 0.5 at r=0.5"].holds
    assert not claims["binarized >= sparse-only - 0.5 at r=0.6"].holds  # 93.0 < 94.0 - 0.5
    m["auto_switch"] = 86.0
    assert not {c.claim: c for c in build_claims(m, cfg)}["Auto-Switch > best Task Arithmetic + 2"].holds


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    cfg = QuickConfig(
        seeds=[0],
        hidden=32,
        finetune_epochs=1,
        ratios=[0.0, 0.5, 0.6],
        ta_alphas=[0.3],
        baselines=["ties"],
        n_query=8,
        knn_k=3,
    )
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert res.package == "t-switch" and len(res.claims) == 8
    assert all((tmp_path / p).is_file() for p in res.plots)
    m = res.metrics["mean"]
    for c in res.claims:
        if c.method in m:
            assert c.method_value == pytest.approx(m[c.method])
    assert 0 < m["storage_pct_fp32"] < 10 and 0 <= m["auto_switch"] <= 100
