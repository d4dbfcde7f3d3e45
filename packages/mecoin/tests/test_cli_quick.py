"""Configs, the CLI (smoke runs, resume, clear errors) and the quick reproduction's claim builder."""

import json
from pathlib import Path

import pytest
import yaml

from mecoin import ExperimentConfig
from mecoin.cli import main
from mecoin.quick import build_claims, quick_reproduction
from papers_shared.config import ConfigError, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_config_loads_with_its_table_settings():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"corafull", "cs", "computers", "reddit", "quick"} <= set(names)
    for name in names:
        cfg = load_config(ExperimentConfig, CONFIGS / f"{name}.yaml")
        if name != "base":
            assert cfg.name == name
    cora = load_config(ExperimentConfig, CONFIGS / "corafull.yaml")
    assert (cora.protocol.base_classes, cora.protocol.ways, cora.protocol.shots) == (50, 2, 5)
    assert (cora.mecoin.num_codebooks, cora.mecoin.keys_per_codebook, cora.mecoin.proj_dim) == (100, 800, 13)
    assert cora.encoder.hidden == 128 and not cora.protocol.legacy_split
    comp = load_config(ExperimentConfig, CONFIGS / "computers.yaml")
    assert (comp.dataset, comp.protocol.base_classes, comp.protocol.ways) == ("computers", 5, 1)
    leg = load_config(ExperimentConfig, CONFIGS / "legacy_corafull.yaml")
    assert leg.protocol.legacy_split and leg.mecoin.vote_scale == 3.0 and not leg.protocol.mask_unseen
    assert leg.mecoin.legacy_mode_schedule and leg.mecoin.legacy_shuffle_bug
    assert load_config(ExperimentConfig, CONFIGS / "gat_corafull.yaml").encoder.backbone == "gat"


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(ExperimentConfig, CONFIGS / "quick.yaml", ["mecoin.num_codebok=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExperimentConfig, tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="distill"):
        load_config(ExperimentConfig, CONFIGS / "quick.yaml", ["mecoin.distill=sideways"])
    with pytest.raises(ValueError, match="method"):
        load_config(ExperimentConfig, CONFIGS / "quick.yaml", ["methods=[mecoin,gem]"])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(ExperimentConfig, CONFIGS / "legacy_cs.yaml", ["seeds=[1,2]"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(ExperimentConfig, tmp_path / "c.yaml")
    assert again == cfg and again.seeds == [1, 2]


def test_real_dataset_missing_gives_clear_error(tmp_path, capsys):
    from mecoin.data import load_graph

    cfg = load_config(ExperimentConfig, CONFIGS / "corafull.yaml", [f"data_root={tmp_path}"])
    with pytest.raises(DatasetNotFoundError, match="CoraFull"):
        load_graph(cfg)
    rc = main(["run", "--config", str(CONFIGS / "cs.yaml"), f"data_root={tmp_path}", f"out_dir={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Coauthor" in err and str(tmp_path) in err and "download" in err


def _tiny_yaml(tmp_path: Path) -> Path:
    cfg = {
        "name": "tiny",
        "dataset": "csbm",
        "seeds": [0],
        "methods": ["mecoin", "finetune", "ncm"],
        "device": "cpu",
        "progress": False,
        "out_dir": str(tmp_path / "runs"),
        "csbm": {"num_classes": 6, "nodes_per_class": 20, "feat_dim": 8, "p_in": 0.2, "p_out": 0.02},
        "protocol": {"base_classes": 2, "ways": 2, "shots": 3},
        "encoder": {"hidden": 16},
        "pretrain": {"max_epochs": 20},
        "mecoin": {"num_codebooks": 4, "keys_per_codebook": 8, "proj_dim": 5, "epochs_per_session": 10},
        "baselines": {"epochs": 10},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_run_writes_results_and_resumes(tmp_path, capsys):
    path = _tiny_yaml(tmp_path)
    assert main(["run", "--config", str(path)]) == 0
    out = tmp_path / "runs" / "tiny"
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"mecoin", "finetune", "ncm"}
    for run in res["runs"]:
        assert len(run["accs"]) == 3 and len(run["acc_matrix"]) == 3
        assert run["pd"] == pytest.approx(run["accs"][0] - run["accs"][-1])
    s = res["summary"]["mecoin"]
    assert s["avg"] == pytest.approx(sum(s["accs_mean"]) / 3)
    assert "mecoin" in capsys.readouterr().out
    # resume: the finished reports are reused as they are
    before = (out / "mecoin-seed0.json").read_text()
    assert main(["run", "--config", str(path), "--resume"]) == 0
    assert (out / "mecoin-seed0.json").read_text() == before
    again = json.loads((out / "results.json").read_text())
    assert again["summary"]["mecoin"]["accs_mean"] == s["accs_mean"]


def test_cli_show_config_pretrain_ablate(tmp_path, capsys):
    path = _tiny_yaml(tmp_path)
    assert main(["show-config", "--config", str(path), "mecoin.distill=none", "--legacy"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["mecoin"]["distill"] == "none" and shown["protocol"]["legacy_split"] is True
    assert main(["show-config", "--dataset", "cs", "--backbone", "gat", "--hidden", "64"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["dataset"] == "cs" and shown["protocol"]["base_classes"] == 5
    assert shown["encoder"] == {**shown["encoder"], "backbone": "gat", "hidden": 64}
    assert main(["pretrain", "--config", str(path)]) == 0
    assert list((tmp_path / "runs" / "tiny" / "pretrain").glob("encoder-*.pt"))
    assert main(["ablate", "--config", str(path), "--variants", "full,no_meco"]) == 0
    abl = json.loads((tmp_path / "runs" / "tiny" / "ablation.json").read_text())
    assert set(abl["variants"]) == {"full", "no_meco"}
    assert main(["ablate", "--config", str(path), "--variants", "full,no_such"]) == 2
    assert "unknown ablation variant" in capsys.readouterr().err
    assert main(["show-config", "--config", str(path), "mecoin.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def _summary(pd_m, last_m, pd_f, last_f):
    return {"mecoin": {"pd": pd_m, "last": last_m}, "finetune": {"pd": pd_f, "last": last_f}}


def test_claims_are_computed_from_numbers():
    holds = build_claims(_summary(5.0, 80.0, 40.0, 50.0))
    assert [c.holds for c in holds] == [True, True]
    assert holds[0].method_value == 5.0 and holds[0].baseline_value == 40.0 and holds[0].margin == -10.0
    close = build_claims(_summary(31.0, 49.0, 40.0, 50.0))  # PD only 9 points better; accuracy lower
    assert [c.holds for c in close] == [False, False]
    nan = build_claims(_summary(float("nan"), 80.0, 40.0, 50.0))
    assert not nan[0].holds


@pytest.mark.slow
def test_quick_reproduction_pipeline_on_a_tiny_budget(tmp_path, monkeypatch):
    """The whole quick path (variants, summary, claims, plots) on a shrunken config."""
    import mecoin.quick as quick

    tiny = load_config(ExperimentConfig, _tiny_yaml(tmp_path), ["seeds=[0]"])
    monkeypatch.setattr(quick, "quick_config", lambda: tiny)
    res = quick_reproduction(tmp_path / "q", quick=True)
    s = res.metrics["summary"]
    assert set(s) == set(quick.VARIANTS)
    assert [c.holds for c in res.claims] == [c.holds for c in build_claims(s)]
    assert res.claims[0].method_value == s["mecoin"]["pd"]
    assert res.seeds == [0] and res.command == "uv run reproduce mecoin"
    for name in res.plots:
        assert name.startswith("mecoin_") and (tmp_path / "q" / name).stat().st_size > 0
    assert "Holds" in res.notes
