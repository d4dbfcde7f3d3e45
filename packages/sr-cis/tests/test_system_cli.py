import json

import pytest
import torch
from torch.utils.data import ConcatDataset

from papers_shared.config import ConfigError, load_config
from papers_shared.mllm import ScriptedModel
from sr_cis.cli import main
from sr_cis.config import ExperimentConfig, QuickConfig
from sr_cis.scenario import GaussianPixelGenerator
from sr_cis.system import SRCIS

CONFIGS = "packages/sr-cis/configs"


def _oracle_by_prompt(names):
    # answers the first candidate named in the prompt: deterministic, exercises parsing
    def ans(im, p):
        fill = p.split(": ", 1)[1].split("?")[0]
        return "it is " + fill.replace(" or ", ", ").split(", ")[0]

    return ScriptedModel(ans)


def test_end_to_end_tiny_run_and_save_load(small, tiny_cfg, make_task, names, tmp_path):
    from sr_cis.small_model import build_small_model

    tiny_cfg.caoad.warmup = 4
    s = SRCIS(small, _oracle_by_prompt(names), GaussianPixelGenerator(4), tiny_cfg, names)
    tasks = [[0, 1], [2, 3]]
    toc = {c: t for t, cs in enumerate(tasks) for c in cs}
    for t, cs in enumerate(tasks):
        s.train_task(make_task(cs, 80), t)
        s.after_task(t, 2)  # period 2 -> restructure after the second task
    assert s.memory.ltm is not None and not s.memory.stm
    test = ConcatDataset([make_task(cs) for cs in tasks])
    res = s.evaluate(test, toc)
    for k in ("acc", "acc_fast", "route_frac", "fix_rate", "harm_rate", "per_task", "storage"):
        assert k in res
    assert set(res["per_task"]) == {0, 1} and 0.0 <= res["acc"] <= 1.0
    assert 0.0 < res["route_frac"] < 1.0  # CA-OAD routed some but not all samples
    st = res["storage"]
    assert (
        st["regions"] == 1
        and st["lora_bytes"] > 0
        and st["text_bytes"] == sum(len(n) for n in ["zero", "one", "two", "three"])
    )
    # round trip: a fresh system restores identical predictions
    path = s.save(tmp_path / "state.pt", include_backbone=True)
    torch.manual_seed(123)
    fresh = SRCIS(build_small_model(tiny_cfg.small), None, GaussianPixelGenerator(4), tiny_cfg, names)
    fresh.load(path)
    x = make_task([0, 1, 2, 3], 40).tensors[0]
    s.reset_stream()
    fresh.reset_stream()
    assert torch.equal(s.predict(x)[1]["fast_pred"], fresh.predict(x)[1]["fast_pred"])
    assert fresh.memory.ltm.classes == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError):
        fresh.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="fresh small model"):
        fresh.load(path)


def test_train_task_rejects_repeated_or_unnamed_classes(small, tiny_cfg, make_task, names):
    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 40), 0)
    with pytest.raises(ValueError, match="already learned"):
        s.train_task(make_task([1, 2], 40), 1)
    s2 = SRCIS(small, None, None, tiny_cfg, {0: "zero"})
    with pytest.raises(KeyError, match="class name"):
        s2.train_task(make_task([5, 6], 40), 0)


def test_frozen_adapters_unchanged_by_later_tasks(small, tiny_cfg, make_task, names):
    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 60), 0)
    st0 = small.adapter_state("stm_0")
    h0 = s.memory.stm[0].head.weight.clone()
    s.train_task(make_task([2, 3], 60), 1)
    st0b = small.adapter_state("stm_0")
    assert all(torch.equal(st0[k], st0b[k]) for k in st0)
    assert torch.equal(h0, s.memory.stm[0].head.weight)
    assert not any(p.requires_grad for p in small.parameters())


def test_config_errors_and_all_tables_parse():
    import glob

    paths = sorted(glob.glob(f"{CONFIGS}/*.yaml"))
    assert len(paths) >= 11
    for p in paths:
        if p.endswith("quick.yaml"):
            load_config(QuickConfig, p)
        else:
            load_config(ExperimentConfig, p)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(ExperimentConfig, f"{CONFIGS}/cifar100_10t.yaml", ["system.stm.epoch=3"])
    with pytest.raises(ConfigError):
        load_config(ExperimentConfig, None, ["system.restructure.period=sometimes"])
    cfg = load_config(ExperimentConfig, f"{CONFIGS}/domainnet_5t_fewshot5.yaml")
    assert cfg.system.small.lora.r == 30 and cfg.data.shots == 5 and not cfg.system.stm.train_head
    cfg = load_config(ExperimentConfig, None, ["system.restructure.period=end"])
    assert cfg.system.restructure.period == "end"


def test_cli_errors_and_show_config(tmp_path, capsys, monkeypatch):
    assert main(["show-config", "--config", f"{CONFIGS}/imagenet_r_10t.yaml", "system.stm.epochs=3"]) == 0
    assert "epochs: 3" in capsys.readouterr().out
    assert main(["show-config", "--config", f"{CONFIGS}/cifar100_10t.yaml", "bogus=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    rc = main(
        ["train", "--config", f"{CONFIGS}/cifar100_10t.yaml", "--out", str(tmp_path), f"data.root={tmp_path}"]
    )
    assert rc == 2 and "CIFAR100 was not found" in capsys.readouterr().err
    rc = main(["eval", "--config", f"{CONFIGS}/digits_smoke.yaml", "--state", str(tmp_path / "none.pt")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    csv = tmp_path / "t.csv"
    csv.write_text("method,dataset,final_acc,avg_acc\ninflora,cifar100,86.5,91.7\n")
    assert main(["import-table", str(csv)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["final_acc"] == 86.5
    csv.write_text("method,dataset\ninflora,cifar100\n")
    assert main(["import-table", str(csv)]) == 2


def test_offline_hub_model_gives_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rc = main(
        [
            "train", "--config", f"{CONFIGS}/digits_smoke.yaml", "--out", str(tmp_path),
            "system.small.model_id=google/vit-base-patch16-224-in21k", "data.image_size=16",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "vit-base-patch16-224-in21k" in err and "not" in err


def test_sdxl_config_without_diffusers_is_clear(tmp_path, capsys):
    pytest.importorskip("sklearn")
    try:
        import diffusers  # noqa: F401

        pytest.skip("diffusers is installed")
    except ImportError:
        pass
    rc = main(
        ["train", "--config", f"{CONFIGS}/digits_smoke.yaml", "--out", str(tmp_path), "system.generator.kind=sdxl",
         "pretrain_epochs=0"]
    )  # fmt: skip
    assert rc == 2 and "sr-cis[diffusion]" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_smoke_and_resume(tmp_path, capsys):
    rc = main(["train", "--config", f"{CONFIGS}/digits_smoke.yaml", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "digits_smoke" / "results.json").read_text())
    assert set(res) == {"sr_cis", "seq_lora"}
    r = res["sr_cis"]
    assert r["tasks_done"] == 2 and len(r["matrix_acc"]) == 2 and r["restructures"][0]["new"] == "ltm_1"
    ckpt = tmp_path / "digits_smoke" / "sr_cis" / "ckpt"
    assert (ckpt / "latest.json").is_file()
    capsys.readouterr()
    state = ckpt / json.loads((ckpt / "latest.json").read_text())["file"]
    assert main(["eval", "--config", f"{CONFIGS}/digits_smoke.yaml", "--state", str(state)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert abs(ev["acc_fast"] - r["final_acc_fast"]) < 1e-6  # same memory, same seeded 100-sample subset
    # resume: nothing left to train, the stored rows come back
    rc = main(["train", "--config", f"{CONFIGS}/digits_smoke.yaml", "--out", str(tmp_path), "--resume"])
    assert rc == 0
    res2 = json.loads((tmp_path / "digits_smoke" / "results.json").read_text())
    assert res2["sr_cis"]["final_acc"] == r["final_acc"]


def test_quick_claims_are_computed_from_numbers():
    from sr_cis.quick import build_claims

    m = {
        "final.per_task_lora": 50.0, "final.seq_lora": 20.0, "final.sr_cis_fast": 47.0, "final.sr_cis": 52.0,
        "passes.sr_cis": 2.0, "passes.per_task_lora": 5.0, "acc_fast_flagged": 20.0, "acc_fast_unflagged": 60.0,
        "final.simple_cil": 60.0, "forgetting.per_task_lora": 5.0, "forgetting.seq_lora": 30.0,
    }  # fmt: skip
    claims = build_claims(m)
    assert [c.holds for c in claims] == [True, True, True, True, True, True, False]
    m["final.sr_cis_fast"] = 40.0
    assert not build_claims(m)[2].holds
    m |= {"fewshot_drop.sr_cis": 1.0, "fewshot_drop.per_task_lora": 3.0, "fewshot_drop.simple_cil": 0.5}
    assert [c.holds for c in build_claims(m)[7:]] == [True, False]


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    from sr_cis.quick import quick_reproduction

    q = QuickConfig(
        pretrain_epochs=1, stm_epochs=1, seq_epochs=1, restructure_epochs=1, n_desc=4, tiny_llava=False
    )
    res = quick_reproduction(tmp_path, cfg=q)
    assert len(res.claims) == 9 and all(isinstance(c.holds, bool) for c in res.claims)
    assert "fewshot_drop.sr_cis" in res.metrics
    assert (tmp_path / "sr-cis_accuracy_per_task.png").is_file()
    assert 0 <= res.metrics["final.sr_cis"] <= 100
