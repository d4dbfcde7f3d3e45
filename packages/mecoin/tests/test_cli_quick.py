"""Configs (validation when built, shipped files), the CLI (commands, error boundary) and the quick run."""

import json
import re
from pathlib import Path

import pytest
import yaml

from mecoin import ExperimentConfig, MecoinConfig, ProtocolConfig
from mecoin.cli import main
from mecoin.quick import build_claims, quick_config, quick_reproduction
from papers_shared.cli import list_configs
from papers_shared.config import ConfigError, load_config, save_config
from papers_shared.data.errors import DatasetNotFoundError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_shipped_config_loads_with_its_table_settings():
    shipped = list_configs("mecoin")
    assert {"corafull", "cs", "computers", "reddit", "quick", "demo"} <= set(shipped)
    for name, path in shipped.items():
        assert path.read_text().startswith("# "), f"{name}.yaml must start with a one-line description"
        cfg = load_config(ExperimentConfig, path)
        if name != "base":
            assert cfg.name == name
    cora = load_config(ExperimentConfig, shipped["corafull"])
    assert (cora.protocol.base_classes, cora.protocol.ways, cora.protocol.shots) == (50, 2, 5)
    assert (cora.mecoin.num_codebooks, cora.mecoin.keys_per_codebook, cora.mecoin.proj_dim) == (100, 800, 13)
    assert cora.encoder.hidden == 128 and not cora.protocol.legacy_split
    comp = load_config(ExperimentConfig, shipped["computers"])
    assert (comp.dataset, comp.protocol.base_classes, comp.protocol.ways) == ("computers", 5, 1)
    leg = load_config(ExperimentConfig, shipped["legacy_corafull"])
    assert leg.protocol.legacy_split and leg.mecoin.vote_scale == 3.0 and not leg.protocol.mask_unseen
    assert leg.mecoin.legacy_mode_schedule and leg.mecoin.legacy_shuffle_bug
    assert load_config(ExperimentConfig, shipped["gat_corafull"]).encoder.backbone == "gat"
    assert quick_config() == load_config(ExperimentConfig, shipped["quick"])


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["mecoin.lr=-1"], r"mecoin\.lr=-1.*> 0"),
        (["mecoin.lr=nan"], "finite"),
        (["mecoin.attn_dropout=1.0"], "attn_dropout"),
        (["mecoin.distill=sideways"], "distill"),
        (["methods=[mecoin,gem]"], "gem"),
        (["protocol.shots=0"], "shots"),
        (["protocol.base_classes=20"], "a 12-class graph .* cannot have 20 base classes"),
        (["protocol.num_sessions=4"], "not enough for protocol.num_sessions=4"),
        (["mecoin.num_classes=5"], "smaller than the 12 classes"),
        (["csbm.nodes_per_class=5"], "too small for protocol.shots=5"),
        (["seeds=[]"], "at least one seed"),
        (["mecoin.num_codebok=3"], "unknown config key"),
    ],
)
def test_bad_configs_fail_when_built(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, CONFIGS / "quick.yaml", overrides)


def test_configs_validate_in_python_too():
    with pytest.raises(ConfigError, match="lr"):
        MecoinConfig(lr=-1)
    with pytest.raises(ConfigError, match="a 70-class graph .* cannot have 80 base classes"):
        ExperimentConfig(protocol=ProtocolConfig(base_classes=80))
    assert MecoinConfig(legacy=True).vote_scale == 3.0


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
    rc = main(["run", "--config", "cs", f"data_root={tmp_path}", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Coauthor" in err and str(tmp_path) in err and "download" in err


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
    path.write_text("# a tiny run for the tests\n" + yaml.safe_dump(cfg))
    return path


def test_cli_run_writes_results_memory_and_resumes(tmp_path, capsys):
    path = _tiny_yaml(tmp_path)
    assert main(["run", "--config", str(path)]) == 0
    out = tmp_path / "runs" / "tiny"
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["summary"]) == {"mecoin", "finetune", "ncm"}
    res = json.loads((out / "results.json").read_text())
    for run in res["runs"]:
        assert len(run["accs"]) == 3 and len(run["acc_matrix"]) == 3
        assert run["pd"] == pytest.approx(run["accs"][0] - run["accs"][-1])
    s = res["summary"]["mecoin"]
    assert s["avg"] == pytest.approx(sum(s["accs_mean"]) / 3)
    # the trained memory is a safetensors file that `eval` scores exactly as the run did
    memory = out / "mecoin-seed0.safetensors"
    assert main(["eval", "--weights", str(memory)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(100 * res["runs"][0]["accs"][-1])
    # resume: the finished reports are reused as they are
    before = (out / "mecoin-seed0.json").read_text()
    assert main(["run", "--config", str(path), "--resume"]) == 0
    assert (out / "mecoin-seed0.json").read_text() == before


def test_cli_show_config_list_configs_pretrain_ablate(tmp_path, capsys):
    path = _tiny_yaml(tmp_path)
    assert main(["show-config", "--config", str(path), "mecoin.distill=none", "legacy=true"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["mecoin"]["distill"] == "none" and shown["protocol"]["legacy_split"] is True
    assert main(["list-configs"]) == 0
    listed = capsys.readouterr().out
    assert "corafull" in listed and "quick" in listed
    assert main(["pretrain", "--config", str(path)]) == 0
    assert list((tmp_path / "runs" / "tiny" / "pretrain").glob("encoder-*.safetensors"))
    capsys.readouterr()
    assert main(["ablate", "--config", str(path), "--variants", "full,no_meco"]) == 0
    abl = json.loads((tmp_path / "runs" / "tiny" / "ablation.json").read_text())
    assert set(abl["variants"]) == {"full", "no_meco"}
    capsys.readouterr()
    assert main(["ablate", "--config", str(path), "--variants", "full,no_such"]) == 2
    assert "unknown ablation variant" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["show-config", "--config", "quick", "mecoin.nope=1"], "unknown config key"),
        (["show-config", "--config", "quick", "mecoin.lr=-1"], r"mecoin\.lr=-1"),
        (["show-config", "--config", "quick", "protocol.base_classes=20"], "cannot have 20 base classes"),
        (["show-config", "--config", "no_such_config"], "not found"),
    ],
)
def test_cli_config_errors_are_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.search(match, err)


def test_cli_out_pointing_at_a_file_is_refused_before_work(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(["run", "--config", "quick", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a_file" in err and "\n" not in err
    assert target.read_text() == "x"


def _summary(pd_m, last_m, f_m, pd_f, last_f, f_f, n=3):
    def rec(pd, last, f):
        return {"pd_per_seed": [pd] * n, "last_per_seed": [last] * n, "forgetting_per_seed": [f] * n,
                "seeds": list(range(n))}  # fmt: skip

    return {"mecoin": rec(pd_m, last_m, f_m), "finetune_last": rec(pd_f, last_f, f_f)}


def test_claims_are_computed_from_numbers():
    holds = build_claims(_summary(5.0, 80.0, 3.0, 40.0, 50.0, 60.0))
    assert [c.holds for c in holds] == [True, True, True]
    assert holds[0].method_value == 5.0 and holds[0].baseline_value == 40.0 and holds[0].margin == -10.0
    assert holds[0].paired["wins"] == 3 and holds[0].paired["min_wins"] == 2
    close = build_claims(_summary(31.0, 49.0, 61.0, 40.0, 50.0, 60.0))  # PD only 9 points better
    assert [c.holds for c in close] == [False, False, False]


@pytest.mark.slow
def test_quick_reproduction_pipeline_on_a_tiny_budget(tmp_path, monkeypatch):
    """The whole quick path (variants, summary, claims, plots) on a shrunken config."""
    import mecoin.quick as quick

    tiny = load_config(
        ExperimentConfig,
        _tiny_yaml(tmp_path),
        ["seeds=[0,1]", "methods=[mecoin,finetune,finetune_last,joint,probe,ncm]"],
    )
    monkeypatch.setattr(quick, "quick_config", lambda: tiny)
    res = quick_reproduction(tmp_path / "q", quick=True)
    s = res.metrics["summary"]
    assert set(s) == set(tiny.methods) | set(quick.EXTRA_VARIANTS)
    assert [c.holds for c in res.claims] == [c.holds for c in build_claims(s)]
    assert res.claims[0].method_value == pytest.approx(s["mecoin"]["pd"])
    assert res.claims[0].paired["n"] == 2
    assert res.seeds == [0, 1] and res.command == "uv run reproduce mecoin"
    for name in res.plots:
        assert name.startswith("mecoin_") and (tmp_path / "q" / name).stat().st_size > 0
    assert "Holds" in res.notes and "probe" in res.notes
