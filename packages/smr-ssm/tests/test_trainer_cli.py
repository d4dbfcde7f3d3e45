"""Trainer (parameter groups, schedule, exact resume), configs, CLI smoke tests and the quick claims."""

import json
from pathlib import Path

import pytest
import torch

from papers_shared.config import ConfigError, load_config
from papers_shared.results import Claim
from smr_ssm.cli import main
from smr_ssm.config import LMConfig, LRAConfig, NSSConfig, TrainConfig
from smr_ssm.models import SSMConfig, SSMForCausalLM
from smr_ssm.quick import build_claims
from smr_ssm.trainer import StepSampler, Trainer, build_scheduler, param_groups

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_lm(smr="default", layer_type="s4d"):
    return SSMForCausalLM(
        SSMConfig(vocab_size=30, d_model=16, n_layer=1, d_state=8, layer_type=layer_type, smr=smr)
    )


def test_param_groups_follow_the_s4_convention():
    model = tiny_lm()
    groups = {g["name"]: g for g in param_groups(model, lr=5e-3, weight_decay=0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    ssm = {names[id(p)].split(".")[-1] for p in groups["ssm"]["params"]}
    assert ssm == {"log_dt", "log_A_real", "A_imag"}
    assert groups["ssm"]["lr"] == 1e-3 and groups["ssm"]["weight_decay"] == 0.0
    assert {names[id(p)].split(".")[-1] for p in groups["smr"]["params"]} == {"weight", "bias"}
    assert groups["smr"]["lr"] == 5e-3 and groups["smr"]["weight_decay"] == 0.0
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert "model.layers.0.mixer.C" in decay and not any("norm" in n or n.endswith("bias") for n in decay)
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))  # tied weights counted once
    mamba = {g["name"]: g for g in param_groups(tiny_lm(layer_type="mamba"), 1e-3, 0.1)}
    assert {names_ for names_ in ("no_decay",)} <= set(mamba)


def test_cosine_schedule_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, TrainConfig(max_steps=100, warmup_frac=0.1, schedule="cosine"))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_step_sampler_covers_each_epoch():
    s = StepSampler(10, 4, seed=1)
    idx = torch.cat([s(i) for i in range(5)])  # 20 draws = 2 epochs
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))
    assert torch.equal(s(3), StepSampler(10, 4, seed=1)(3))


def test_resume_is_exact(tmp_path):
    data = torch.randint(0, 30, (64, 12))
    sampler = StepSampler(64, 4, seed=0)

    def batch_fn(i):
        ids = data[sampler(i)]
        return {"input_ids": ids, "labels": ids}

    cfg = TrainConfig(
        lr=1e-2, max_steps=6, batch_size=4, checkpoint_every=3, log_every=1, eval_every=0, device="cpu"
    )
    torch.manual_seed(0)
    full = Trainer(tiny_lm(), cfg, batch_fn, out_dir=tmp_path / "a", progress=False)
    full.train()
    torch.manual_seed(0)
    part = Trainer(tiny_lm(), cfg, batch_fn, out_dir=tmp_path / "b", progress=False)
    part.train(stop_at=3)
    assert part.step == 3 and not (tmp_path / "b" / "final").exists()
    torch.manual_seed(123)
    resumed = Trainer(tiny_lm(), cfg, batch_fn, out_dir=tmp_path / "b", progress=False)
    resumed.train(resume=True)
    assert resumed.step == 6
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    assert (tmp_path / "b" / "final" / "config.json").is_file()


def test_configs_load_and_reject_unknown_keys():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cls = (
            LMConfig
            if path.name.startswith("lm_")
            else LRAConfig
            if path.name.startswith("lra_")
            else NSSConfig
            if path.name.startswith("nss")
            else None
        )
        if cls is not None:
            cfg = load_config(cls, path)
            if cls is not NSSConfig:
                cfg.model.to_hf(vocab_size=10)
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(NSSConfig, CONFIGS / "nss_demo.yaml", ["stepz=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(NSSConfig, CONFIGS / "missing.yaml")
    assert main(["nss", "--config", str(CONFIGS / "nss_demo.yaml"), "nope=1"]) == 2


def test_cli_nss_and_bench(tmp_path, capsys):
    out = tmp_path / "nss.json"
    rc = main(
        [
            "nss",
            "--config",
            str(CONFIGS / "nss_demo.yaml"),
            "--out",
            str(out),
            "seeds=[0]",
            "steps=3",
            "n_train=16",
            "n_test=8",
            "length=32",
            "batch_size=4",
            "d_model=8",
            "d_state=4",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert len(res["claims"]) == 6 and res["summary"]["smr"]["mse"]["same"]["mean"] > 0
    assert (
        main(
            [
                "bench",
                "--layers",
                "s4d,s4d+smr",
                "--L",
                "32",
                "repeats=1",
                "warmup=0",
                "d_model=8",
                "d_state=4",
                "batch_size=1",
            ]
        )
        == 0
    )
    assert "s4d+smr" in capsys.readouterr().out


def test_cli_lm_and_lra_offline_errors_and_demo(tmp_path):
    assert (
        main(
            [
                "lm",
                "--config",
                str(CONFIGS / "lm_demo.yaml"),
                f"data_dir={tmp_path / 'none'}",
                f"out_dir={tmp_path / 'o'}",
            ]
        )
        == 2
    )
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        (tmp_path / name).write_text(" = Title = \n the quick brown fox jumps over the lazy dog .\n" * 30)
    rc = main(
        [
            "lm",
            "--config",
            str(CONFIGS / "lm_demo.yaml"),
            "--no-progress",
            f"data_dir={tmp_path}",
            f"out_dir={tmp_path / 'lm'}",
            "train.max_steps=4",
            "train.eval_every=2",
            "train.checkpoint_every=2",
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "lm" / "results.json").read_text())["test_ppl"] > 1
    assert (
        main(
            [
                "lm",
                "--config",
                str(CONFIGS / "lm_demo.yaml"),
                "--no-progress",
                "--resume",
                f"data_dir={tmp_path}",
                f"out_dir={tmp_path / 'lm'}",
                "train.max_steps=6",
            ]
        )
        == 0
    )
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 6
    assert (
        main(
            ["lra", "--config", str(CONFIGS / "lra_listops_demo.yaml"), "--data-dir", str(tmp_path / "none")]
        )
        == 2
    )
    lo = tmp_path / "lra" / "listops-1000"
    lo.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (lo / f"basic_{split}.tsv").write_text(
            "Source\tTarget\n" + "( [MAX 2 9 ] )\t9\n( [MIN 2 9 ] )\t2\n" * 4
        )
    rc = main(
        [
            "lra",
            "--config",
            str(CONFIGS / "lra_listops_demo.yaml"),
            "--no-progress",
            "--data-dir",
            str(tmp_path / "lra"),
            f"out_dir={tmp_path / 'lra_out'}",
        ]
    )
    assert (
        rc == 0 and 0 <= json.loads((tmp_path / "lra_out" / "results.json").read_text())["test_accuracy"] <= 1
    )


def _summary(base_deg, smr_deg, base_norm, smr_norm, base_same, smr_same, repeat_same, seeds_less):
    st = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    return {
        "repeat_last": {"same": st(repeat_same), "jitter": st(0.1)},
        "baseline": {
            "mse": {"same": st(base_same)},
            "degradation": {"jitter": st(base_deg)},
            "state_norm_ratio": {"jitter": st(base_norm)},
        },
        "smr": {
            "mse": {"same": st(smr_same)},
            "degradation": {"jitter": st(smr_deg)},
            "state_norm_ratio": {"jitter": st(smr_norm)},
        },
        "seeds_smr_degrades_less_jitter": seeds_less,
    }


def test_quick_claims_are_computed_from_numbers():
    good = build_claims(_summary(3.0, 2.0, 1.5, 1.4, 0.01, 0.0105, 0.05, 3), 3)
    assert all(isinstance(c, Claim) for c in good) and all(c.holds for c in good)
    bad = build_claims(_summary(2.0, 3.0, 1.4, 1.5, 0.01, 0.02, 0.005, 1), 3)
    assert not any(c.holds for c in bad)
    assert bad[2].method_value == 3.0 and bad[2].baseline_value == 2.0
    s5 = build_claims(_summary(2.0, 3.0, 1.4, 1.5, 0.01, 0.02, 0.005, 1), 3, host="S5")
    assert s5[0].claim.startswith("S5 ") and s5[2].method == "S5+SMR" and s5[2].baseline == "S5"
    assert [c.holds for c in s5] == [c.holds for c in bad]


@pytest.mark.slow
def test_cli_lm_with_transformers_trainer(tmp_path):
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        (tmp_path / name).write_text(
            " = Title = \n a small corpus for the transformers trainer path .\n" * 30
        )
    out = tmp_path / "hf"
    args = [
        "lm",
        "--config",
        str(CONFIGS / "lm_demo.yaml"),
        "--no-progress",
        f"data_dir={tmp_path}",
        f"out_dir={out}",
        "trainer=hf",
    ]
    assert main([*args, "train.max_steps=2", "train.checkpoint_every=1"]) == 0
    assert any((out / "hf").glob("checkpoint-*")) and (out / "final" / "config.json").is_file()
    assert main([*args, "--resume", "train.max_steps=3", "train.checkpoint_every=1"]) == 0
    assert json.loads((out / "results.json").read_text())["val_ppl"] > 1
