"""CLI, configs and the quick reproduction's claim builder."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from ofs_dpo.cli import main
from ofs_dpo.config import ExperimentConfig, OFSDPOConfig
from ofs_dpo.quick import QUICK_CONFIG, build_claims
from papers_shared.config import ConfigError, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_")))
def test_every_config_loads_with_valid_train_keys(path):
    cfg = load_config(ExperimentConfig, path)
    valid = {f.name for f in fields(OFSDPOConfig) if f.init}
    assert set(cfg.train) <= valid, set(cfg.train) - valid
    assert cfg.data.domains


def test_quick_yaml_matches_the_quick_config():
    cfg = load_config(ExperimentConfig, CONFIGS / "quick_cross_domain.yaml")
    assert config_to_dict(cfg) == config_to_dict(QUICK_CONFIG)


@pytest.mark.slow
def test_cli_run_in_domain_smoke(tmp_path, capsys):
    rc = main(
        [
            "run",
            "--config",
            str(CONFIGS / "quick_in_domain.yaml"),
            "--quiet",
            f"output_dir={tmp_path}",
            "seeds=[0]",
            "data.n_train=16",
            "data.n_eval=8",
            "train.max_steps=2",
            "probe_every=1",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "quick_in_domain" / "results.json").read_text())
    assert set(res["runs"]) == {"dpo", "ofs"}
    for method in ("dpo", "ofs"):
        run = res["runs"][method]["0"]
        assert 0.0 <= run["matrix"][0][0] <= 1.0
        assert [p["step"] for p in run["results"][0]["probe"]] == [0.0, 1.0, 2.0]
    assert "reward_accuracy" in res["aggregate"]["ofs"]
    # --resume skips finished domains and reproduces the same numbers
    assert (
        main(
            [
                "run",
                "--config",
                str(CONFIGS / "quick_in_domain.yaml"),
                "--quiet",
                "--resume",
                f"output_dir={tmp_path}",
                "seeds=[0]",
                "data.n_train=16",
                "data.n_eval=8",
                "train.max_steps=2",
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "quick_in_domain" / "results.json").read_text())
    assert again["runs"]["ofs"]["0"]["matrix"] == res["runs"]["ofs"]["0"]["matrix"]


def test_cli_eval_and_show_config(tmp_path, capsys, make_trainer):
    tr = make_trainer()
    adapter = tr.export_leader(tmp_path / "leader")
    args = ["--config", str(CONFIGS / "quick_in_domain.yaml"), "data.n_train=8", "data.n_eval=8"]
    assert main(["eval", *args, "--adapter", str(adapter), "--out", str(tmp_path / "e.json")]) == 0
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["toy_a"]["reward_accuracy"] == 0.0  # untrained adapter: policy == reference
    assert main(["show-config", "--config", str(CONFIGS / "cross_domain_tldr_hh.yaml")]) == 0
    assert "Qwen/Qwen2.5-0.5B-Instruct" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["show-config", "--config", str(CONFIGS / "quick_in_domain.yaml"), "train_steps=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["show-config", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["show-config", "--config", str(CONFIGS / "quick_in_domain.yaml"), "methods=[ppo]"]) == 2
    assert "unknown method" in capsys.readouterr().err
    rc = main(["eval", "--config", str(CONFIGS / "quick_in_domain.yaml"), "--adapter", str(tmp_path)])
    assert rc == 2 and "adapter_config.json" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown train key"):
        from ofs_dpo.experiments import make_args

        make_args(load_config(ExperimentConfig, None, ["train.lr=1"]), tmp_path, 0)


def _fake_seed(acc_dpo, acc_ofs, even_dpo, even_ofs, final):
    probe_dpo = [{"step": 0.0, "grad_weight_dpo": 0.5}, {"step": 8.0, "grad_weight_dpo": 0.3}]
    probe_ofs = [
        {"step": 0.0, "grad_weight_dpo": 0.5, "grad_weight_chase": 0.5},
        {"step": 8.0, "grad_weight_dpo": 0.3, "grad_weight_chase": 0.45},
    ]

    def summ(a_after_b, b):
        return {
            "matrix": [[1.0, None], [a_after_b, b]],
            "final_avg": (a_after_b + b) / 2,
            "forgetting": 1 - a_after_b,
        }

    return {
        "in_domain": {
            "dpo": {"accuracy": acc_dpo, "even_fraction": even_dpo, "probe": probe_dpo, "leader": "fast"},
            "ofs": {"accuracy": acc_ofs, "even_fraction": even_ofs, "probe": probe_ofs, "leader": "fast"},
        },
        "cross_domain": {m: summ(*final[m]) for m in ("seq_dpo", "seq_ofs", "cofs")},
    }


def test_claims_are_computed_from_the_numbers():
    good = {"seq_dpo": (0.7, 1.0), "seq_ofs": (0.72, 1.0), "cofs": (0.9, 0.95)}
    claims, summary = build_claims([_fake_seed(0.9, 0.95, 0.6, 0.7, good)] * 3)
    assert all(c.holds for c in claims), [c.claim for c in claims if not c.holds]
    assert summary["cross_domain"]["cofs"]["final_avg"] == pytest.approx(0.925)
    bad = {"seq_dpo": (0.9, 1.0), "seq_ofs": (0.9, 1.0), "cofs": (0.85, 0.8)}
    claims, _ = build_claims([_fake_seed(0.9, 0.8, 0.7, 0.6, bad)] * 3)
    by_text = {c.claim.split(":")[1].strip()[:25]: c.holds for c in claims}
    assert not by_text["OFS-DPO leader held-out r"]
    assert not by_text["OFS-DPO even-token fracti"]
    assert not by_text["COFS-DPO final accuracy o"]
    assert not by_text["COFS-DPO final average >="]
