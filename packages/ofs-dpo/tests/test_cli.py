"""CLI (papers_shared.cli contract), validated configs and the quick reproduction's claim builder."""

from __future__ import annotations

import json

import pytest
import torch

from ofs_dpo.cli import main
from ofs_dpo.config import ExperimentConfig, TrainSettings
from ofs_dpo.experiment import make_args
from ofs_dpo.quick import build_claims, quick_config
from papers_shared.cli import list_configs, resolve_config
from papers_shared.config import ConfigError, load_config
from papers_shared.testing import CodeRunningPickle

CONFIGS = list_configs("ofs_dpo")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_shipped_config_loads_and_describes_itself(name):
    path = CONFIGS[name]
    assert path.read_text().startswith("# "), f"{path.name} must start with a one-line # comment"
    cfg = load_config(ExperimentConfig, path)
    assert cfg.data.domains and cfg.methods


def test_quick_reads_its_shipped_config():
    cfg = quick_config()
    assert cfg.train.beta == 1.0 and cfg.data.domains == ["toy_a", "toy_b"] and len(cfg.seeds) >= 3
    assert resolve_config("ofs_dpo", "quick") == CONFIGS["quick"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bta=0.2", "unknown config key"),
        ("train.beta=nan", "finite"),
        ("beta=nan", "unknown config key"),
        ("train.learning_rate=-1", ">"),
        ("train.chase_mode=push", "not one of"),
        ("train.chase_interval=0", ">="),
        ("lora.lora_dropout=1.5", "<"),
        ("continual.weights=best", "not one of"),
        ("continual.lam=2", "<="),
        ("methods=[ppo]", "unknown method"),
        ("data.domains=[toy_c]", "data.domains"),
        ("train.extra={lr: 1}", "train.extra"),
        ("eval.win_rate=true", "reward_model"),
    ],
)
def test_show_config_rejects_bad_values_with_one_line(override, message, capsys):
    assert main(["show-config", "--config", "quick_in_domain", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_show_config_prints_the_validated_config(capsys):
    assert main(["show-config", "--config", "cross_domain_tldr_hh", "train.beta=0.2"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-0.5B-Instruct" in out and "beta: 0.2" in out
    assert main(["show-config", "--config", "missing_config"]) == 2
    assert "not found" in capsys.readouterr().err


def test_make_args_passes_the_train_section():
    cfg = load_config(ExperimentConfig, CONFIGS["quick"], ["train.extra={label_smoothing: 0.1}"])
    args = make_args(cfg, "unused-out", 3)
    assert (args.beta, args.learning_rate, args.label_smoothing, args.seed) == (1.0, 1e-3, 0.1, 3)
    assert args.gradient_checkpointing is False and args.report_to == []
    with pytest.raises(ConfigError, match="train.extra"):
        TrainSettings(extra={"beta": 0.2})


@pytest.mark.slow
def test_cli_run_in_domain_smoke_and_resume(tmp_path):
    args = ["run", "--config", "quick_in_domain", "--no-progress", "--out", str(tmp_path), "--seed", "0"]
    small = ["data.n_train=16", "data.n_eval=8", "train.max_steps=2"]
    assert main([*args, *small, "probe_every=1"]) == 0
    res = json.loads((tmp_path / "quick_in_domain" / "results.json").read_text())
    assert set(res["runs"]) == {"dpo", "ofs"}
    for method in ("dpo", "ofs"):
        run = res["runs"][method]["0"]
        assert 0.0 <= run["matrix"][0][0] <= 1.0
        assert [p["step"] for p in run["results"][0]["probe"]] == [0.0, 1.0, 2.0]
    assert "reward_accuracy" in res["aggregate"]["ofs"]
    # --resume skips finished domains and reproduces the same numbers
    assert main([*args, "--resume", *small]) == 0
    again = json.loads((tmp_path / "quick_in_domain" / "results.json").read_text())
    assert again["runs"]["ofs"]["0"]["matrix"] == res["runs"]["ofs"]["0"]["matrix"]


def test_cli_eval_and_its_errors(tmp_path, capsys, make_trainer):
    adapter = make_trainer().export_leader(tmp_path / "leader")
    base = [
        "eval",
        "--config",
        "quick_in_domain",
        "data.n_train=8",
        "data.n_eval=8",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--adapter", str(adapter)]) == 0
    out = json.loads((tmp_path / "o" / "quick_in_domain" / "eval.json").read_text())
    assert out["toy_a"]["reward_accuracy"] == 0.0  # untrained adapter: policy == reference
    capsys.readouterr()
    # a folder without an adapter, a crafted pickle, an --out that is a file: exit 2 and one line each
    assert main([*base, "--adapter", str(tmp_path / "nothing")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    target = tmp_path / "pwned"
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({"x": CodeRunningPickle(target)}, adapter / "adapter_model.bin")
    assert main([*base, "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err.strip()
    assert "refused to load" in err and "adapter_model.bin" in err and "\n" not in err
    assert not target.exists()
    (tmp_path / "file").write_text("x")
    assert main(["run", "--config", "quick_in_domain", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def _fake_seed(loss, acc, chase_end, cofs, dpo):
    def probe(gap=0.0):
        return [
            {"step": 0.0, "grad_weight_dpo": 0.5, "grad_weight_chase": 0.5, "margin_gap": 0.0},
            {"step": 8.0, "grad_weight_dpo": 0.2, "grad_weight_chase": chase_end, "margin_gap": gap},
        ]

    def ind(m):
        return {
            "accuracy": acc[m],
            "dpo_loss": loss[m],
            "even_fraction": 0.5,
            "probe": probe(0.3),
            "leader": "fast",
            "num_swaps": 1,
            "num_checks": 12,
        }

    def cross(a_after_b, b, loss_a):
        return {
            "matrix": [[1.0, None], [a_after_b, b]],
            "final_avg": (a_after_b + b) / 2,
            "forgetting": 1 - a_after_b,
            "dpo_loss_a": [0.1, loss_a],
            "dpo_loss_b": 0.2,
        }

    return {
        "in_domain": {m: ind(m) for m in ("dpo", "ofs", "ofs_alpha0")},
        "cross_domain": {
            "seq_dpo": cross(*dpo),
            "seq_ofs": cross(*dpo),
            "cofs": cross(*cofs),
            "joint_dpo": cross(*dpo),
        },
    }


def test_claims_are_computed_from_the_numbers():
    good = _fake_seed(
        {"dpo": 0.3, "ofs": 0.2, "ofs_alpha0": 0.3},
        {"dpo": 1.0, "ofs": 1.0, "ofs_alpha0": 1.0},
        0.45,
        (1.0, 0.95, 0.2),
        (0.9, 0.97, 0.4),
    )
    claims, summary = build_claims([good] * 3, [0, 1, 2])
    assert all(c.holds for c in claims), [c.claim for c in claims if not c.holds]
    assert summary["in_domain"]["role_swaps_per_check"] == pytest.approx(1 / 12)
    assert claims[0].paired["n"] == 3 and claims[0].paired["seeds"] == [0, 1, 2]
    # a chase term without effect (OFS == alpha 0, identical to DPO) and COFS forgetting more: those claims fail
    tie = _fake_seed(
        {"dpo": 0.3, "ofs": 0.3, "ofs_alpha0": 0.3},
        {"dpo": 1.0, "ofs": 1.0, "ofs_alpha0": 1.0},
        0.1,
        (0.5, 0.9, 0.9),
        (0.9, 0.97, 0.4),
    )
    claims, _ = build_claims([tie] * 3, [0, 1, 2])

    def holds(text: str) -> bool:
        (claim,) = [c for c in claims if text in c.claim]
        return claim.holds

    assert not holds("the chase term changes the trajectory")
    assert holds("OFS-DPO held-out DPO loss <= DPO")  # a tie is <=
    assert not holds("at the end, OFS chase weight")
    assert not holds("COFS-DPO accuracy forgetting")
    assert not holds("COFS-DPO loss forgetting")


def test_missing_model_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no" / "model"
    assert (
        main(["run", "--config", "in_domain_tldr", f"model.name_or_path={missing}", "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "no such model folder" in err and str(missing) in err and "\n" not in err
    assert not (tmp_path / "in_domain_tldr").exists()  # nothing written before the model was found
