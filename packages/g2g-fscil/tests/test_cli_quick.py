import dataclasses
import json
import math

import pytest
import torch

from g2g_fscil.cli import main
from g2g_fscil.config import VARIANTS, ExperimentConfig, G2GConfig, preset
from g2g_fscil.experiment import VARIANT_SPECS, variant_config
from g2g_fscil.quick import build_claims, quick_reproduction
from papers_shared.cli import list_configs, resolve_config
from papers_shared.config import ConfigError, load_config
from papers_shared.reproduce import deterministic_run

TINY = [
    "pretrain_epochs=1",
    "model.meta_iters=2",
    "model.meta_ways=3",
    "model.meta_queries=2",
    "model.retrain_iter=1",
    "model.feat_dim=8",
]


def test_every_shipped_config_loads_and_describes_itself():
    shipped = list_configs("g2g_fscil")
    assert {"quick", "quick_full", "cifar100", "cub200", "imagenet_r", "digits"} <= set(shipped)
    for name, path in shipped.items():
        assert path.read_text().startswith("# "), name
        preset(name)
    c = preset("ablation_node_only")
    assert c.model.alpha == 1.0 and c.base_classes == 60 and c.model.backbone == "resnet12"
    assert preset("cub200").model.backbone == "resnet18"
    assert preset("quick").variants == ["ncm", "teen", "v2v_mode1", "v2v_mode3", "g2g_no_lgp", "g2g"]
    assert set(preset("quick").variants) < set(preset("quick_full").variants)
    assert set(VARIANTS) == set(VARIANT_SPECS)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.alpah=0.3"], "unknown config key"),
        (["model.alpha=1.5"], "alpha"),
        (["model.interaction=g3g"], "interaction"),
        (["dataset=mnist"], "dataset"),
        (["model.lr=-1"], "lr"),
        (["model.lr=.nan"], "finite"),
        (["model.tau=0"], "tau"),
        (["model.lgp=collapse"], "lgp"),
        (["variants=[v2v,magic]"], "variants"),
        (["v2v_mode=4"], "v2v_mode"),
        (["seeds=[]"], "seeds"),
        (["base_classes=99", "ways=5", "num_sessions=8"], "100 classes"),
        (["model.meta_ways=61"], "more ways"),
        (["model.momentum=0"], "nesterov"),
        (["model.node_dim=split", "model.local_pool=3", "model.feat_dim=512"], "not divisible"),
    ],
)
def test_bad_configs_are_refused_when_built(overrides, match, capsys):
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, None, overrides)
    # show-config validates exactly like a run: exit 2, one line naming the problem
    assert main(["show-config", "--config", "cifar100", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_python_construction_validates_too():
    with pytest.raises(ConfigError, match="alpha"):
        G2GConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="digits has 10 classes"):
        ExperimentConfig(dataset="digits", base_classes=9, ways=2, model=G2GConfig(meta_ways=2))
    with pytest.raises(ConfigError, match="unknown variants"):
        ExperimentConfig(variants=["v2v", "magic"])


def test_cli_run_eval_show_config(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--config", "digits", "--no-progress", "--out", str(out), *TINY]) == 0
    res = out / "digits" / "g2g" / "seed0"
    data = json.loads((res / "results.json").read_text())
    assert len(data["accs"]) == 3 and data["method"] == "g2g"
    assert data["extra"]["hm"][0] is None  # NaN is written as null (valid JSON)
    capsys.readouterr()
    rc = main(["eval", "--config", "digits", "--checkpoint", str(res / "model.safetensors"), *TINY])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["sessions"] == 3
    # the saved model reproduces the last-session accuracy of the run exactly
    assert ev["accs"][-1] == pytest.approx(data["accs"][-1], abs=1e-9)
    assert main(["show-config", "--config", "cifar100", "model.alpha=0.7"]) == 0
    assert "alpha: 0.7" in capsys.readouterr().out
    assert main(["list-configs"]) == 0
    assert "quick" in capsys.readouterr().out


def test_cli_ablate_shares_pretraining_and_metatrain(tmp_path):
    out = tmp_path / "runs"
    args = ["ablate", "--config", "digits", "--no-progress", "--out", str(out), "variants=[v2v,g2g]"]
    assert main([*args, *TINY]) == 0
    res = json.loads((out / "digits" / "ablation" / "results.json").read_text())
    assert set(res) == {"v2v", "g2g"}
    assert res["v2v"][0]["config"]["interaction"] == "v2v" and res["g2g"][0]["config"]["interaction"] == "g2g"
    assert (out / "digits" / "pretrain" / "seed0" / "pretrain.safetensors").is_file()
    assert main(["metatrain", "--config", "digits", "--no-progress", "--out", str(out), *TINY]) == 0
    assert (out / "digits" / "g2g" / "seed0" / "metatrain.safetensors").is_file()


def test_cli_user_errors_are_one_line(tmp_path, capsys, crafted_pickle):
    def err(argv):
        assert main(argv) == 2, argv
        text = capsys.readouterr().err.strip()
        assert len(text.splitlines()) == 1, text
        return text

    assert "nope" in err(["run", "--config", "cifar100", f"data_root={tmp_path / 'nope'}", "--no-progress"])
    assert "CUB-200-2011" in err(["run", "--config", "cub200", f"data_root={tmp_path}"])
    assert "Image folder" in err(["run", "--config", "imagenet_r", f"data_root={tmp_path / 'r'}"])
    assert "not found" in err(["eval", "--config", "digits", "--checkpoint", str(tmp_path / "x.safetensors")])
    assert "unknown config key" in err(["run", "--config", "digits", "bogus=1"])
    (tmp_path / "file").write_text("x")
    assert "is a file" in err(["run", "--config", "digits", "--out", str(tmp_path / "file")])
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "damaged.safetensors" in err(["eval", "--config", "digits", "--checkpoint", str(damaged)])
    # a crafted pickle handed over as a model file is never unpickled
    evil = tmp_path / "evil.safetensors"
    target = crafted_pickle(evil)
    assert "evil.safetensors" in err(["eval", "--config", "digits", "--checkpoint", str(evil)])
    assert not target.exists()
    # a safetensors file of someone else's
    from papers_shared.checkpoints import save_safetensors

    save_safetensors({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    assert "not a g2g-fscil model" in err(
        ["eval", "--config", "digits", "--checkpoint", str(tmp_path / "foreign.safetensors")]
    )


def test_damaged_pretrain_cache_is_rebuilt_with_a_warning(tmp_path, crafted_pickle):
    from g2g_fscil.data import load_fscil_data
    from g2g_fscil.experiment import pretrained_state

    cfg = load_config(ExperimentConfig, resolve_config("g2g_fscil", "digits"), TINY)
    data = load_fscil_data(cfg)
    fresh = pretrained_state(cfg, data, 0, tmp_path, resume=False, progress=False)
    assert (tmp_path / "pretrain.safetensors").is_file()
    again = pretrained_state(cfg, data, 0, tmp_path, resume=True, progress=False)  # the cache is reused
    assert all(torch.equal(again[k], v) for k, v in fresh.items())
    target = crafted_pickle(tmp_path / "pretrain.safetensors")
    with pytest.warns(RuntimeWarning, match="pre-training again"):
        rebuilt = pretrained_state(cfg, data, 0, tmp_path, resume=True, progress=False)
    assert not target.exists() and set(rebuilt) == set(fresh)


def _summary(g2g_avg, v2v_avg, coll_lgp, coll_no):
    base = {"pd": 5.0, "collapse": 0.5, "backbone_unchanged": True}
    return {
        "ncm": {**base, "avg": 80.0, "pd": 10.0},
        "v2v_mode3": {**base, "avg": v2v_avg},
        "g2g": {**base, "avg": g2g_avg, "collapse": coll_lgp},
        "g2g_no_lgp": {**base, "avg": 85.0, "collapse": coll_no},
    }


def test_claims_computed_from_numbers():
    ok = _summary(90.0, 90.5, 0.2, 0.4)
    claims = {c.claim[:8]: c for c in build_claims(ok, [ok, ok, ok], [0, 1, 2])}
    assert claims["(a) LGP "].holds and claims["(b) G2G "].holds and claims["(a-cost)"].holds
    assert claims["(a) LGP "].paired["n"] == 3 and claims["(a) LGP "].paired["min_wins"] == 2
    bad = _summary(88.0, 90.5, 0.6, 0.4)
    bad_c = {c.claim[:8]: c.holds for c in build_claims(bad, [bad, bad, bad], [0, 1, 2])}
    assert not bad_c["(a) LGP "] and not bad_c["(b) G2G "]
    # a mean carried by one seed does not count: 1 of 3 seeds lower
    seeds = [_summary(90, 90, 0.1, 0.4), _summary(90, 90, 0.45, 0.4), _summary(90, 90, 0.45, 0.4)]
    mean = _summary(90, 90, 1 / 3, 0.4)
    assert not {c.claim[:8]: c.holds for c in build_claims(mean, seeds, [0, 1, 2])}["(a) LGP "]


def test_quick_reproduction_tiny_budget_is_deterministic(tmp_path):
    cfg = preset("quick")
    model = dataclasses.replace(cfg.model, meta_iters=2, retrain_iter=1, meta_queries=2)
    cfg = dataclasses.replace(cfg, seeds=[0], pretrain_epochs=1, model=model)
    with deterministic_run(1):
        res = quick_reproduction(tmp_path, cfg=cfg)
    with deterministic_run(1):
        again = quick_reproduction(tmp_path / "again", cfg=cfg)
    assert json.dumps(res.metrics, sort_keys=True) == json.dumps(again.metrics, sort_keys=True)
    names = {c.claim[:4] for c in res.claims}
    assert {"(a) ", "(b) ", "(c) "} <= names
    s, per = res.metrics["summary"], res.metrics["per_seed"]
    a = next(c for c in res.claims if c.claim.startswith("(a) "))
    assert a.paired["method"] == [per[0]["g2g"]["collapse"]] and a.method_value == s["g2g"]["collapse"]
    assert a.holds == (s["g2g"]["collapse"] < s["g2g_no_lgp"]["collapse"])
    bounds = res.metrics["bounds"]
    assert bounds["chance"] == pytest.approx([100 / 6, 100 / 8, 100 / 10])
    assert 0 <= bounds["joint_last"] <= 100 and not math.isnan(bounds["joint_last"])
    for p in res.plots:
        assert (tmp_path / p).is_file() and p.startswith("g2g-fscil_")


def test_variant_configs():
    base = preset("quick")
    assert variant_config(base, "v2v_mode3")[1].v2v_mode == 3
    assert variant_config(base, "g2g_no_lgp")[1].model.lgp is None
    assert variant_config(base, "g2g_lgp_preserve")[1].model.lgp == "preserve"
    assert variant_config(base, "g2g_split")[1].model.node_dim == "split"
    assert variant_config(base, "g2g")[1].model.lgp == "centred"  # the default LGP
    with pytest.raises(ConfigError, match="unknown variant"):
        variant_config(base, "magic")
