"""Trainer (parameter groups, schedule, exact resume, safe checkpoint loading), configs (validated when
built), the command line (every command, the error boundary, Ctrl-C) and the quick claims."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from papers_shared.checkpoints import CheckpointError, save_safetensors
from papers_shared.cli import list_configs, resolve_config
from papers_shared.config import ConfigError, load_config
from papers_shared.results import Claim
from papers_shared.testing import interruptible, run_cli
from smr_ssm.cli import main
from smr_ssm.config import ExperimentConfig, ModelConfig, NSSConfig, TrainConfig
from smr_ssm.models import SSMConfig, SSMForCausalLM
from smr_ssm.quick import build_claims, build_variant_claims
from smr_ssm.trainer import StepSampler, Trainer, build_scheduler, param_groups


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


def test_every_shipped_config_loads_and_bad_values_are_refused():
    for name, path in list_configs("smr_ssm").items():
        cfg = load_config(ExperimentConfig, path)
        assert cfg.experiment in ("lm", "lra", "nss", "bench"), name
        if cfg.experiment in ("lm", "lra"):
            cfg.model.to_hf(vocab_size=10)
        with open(path) as fh:
            assert fh.readline().startswith("# "), name
    quick = resolve_config("smr_ssm", "quick")
    bad = [
        ("stepz=3", "unknown config key"),
        ("train.lr=-1", "train.lr"),
        ("train.lr=nan", "finite"),
        ("train.schedule=cosin", "not one of"),
        ("model.layer_type=s6", "not one of"),
        ("model.smr=nope", "unknown SMR preset"),
        ("model.dt_min=0.5", "larger than model.dt_max"),
        ("model.dropout=1.5", "model.dropout"),
        ("nss.models=[baseline,bogus]", "not one of"),
        ("nss.slower_steps=[2.5,1.5]", "lower end"),
        ("nss.jitter=1.0", "nss.jitter"),
        ("lm.eval_stride=4096", "larger than lm.context"),
        ("lra.task=sudoku", "not one of"),
        ("bench.layers=[s4d+smr:nope]", "unknown SMR preset"),
        ("model.dt_rank=0", "dt_rank"),
    ]
    for over, match in bad:
        with pytest.raises(ConfigError, match=match):
            load_config(ExperimentConfig, quick, [over])
    with pytest.raises(ConfigError, match="nss.models"):
        NSSConfig(models=["bogus"])
    with pytest.raises(ConfigError, match="train.lr|lr="):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="d_state"):
        ModelConfig(layer_type="s4d", d_state=7)


def test_show_config_validates_like_a_run(capsys):
    assert main(["show-config", "--config", "quick"]) == 0
    assert "observed_steps" in capsys.readouterr().out
    assert main(["show-config", "--config", "quick", "train.lr=-1"]) == 2
    assert main(["nss", "--config", "quick", "nss.horizon=0"]) == 2
    err = capsys.readouterr().err
    assert "nss.horizon" in err and err.count("\n") == 2  # one line per failing command
    assert main(["lra", "--config", "lm_wt103_s4d"]) == 2
    assert "smr-ssm lm" in capsys.readouterr().err


TINY_NSS = ["nss.seeds=[0]", "train.max_steps=3", "nss.n_train=16", "nss.n_test=8", "nss.length=32",
            "train.batch_size=4", "model.d_model=8", "model.d_state=4", "nss.workers=1"]  # fmt: skip


def test_cli_nss_and_bench(tmp_path, capsys):
    out = tmp_path / "nss"
    assert main(["nss", "--config", "quick", "--out", str(out), *TINY_NSS]) == 0
    res = json.loads((out / "nss.json").read_text())
    assert len(res["claims"]) == 9 and res["summary"]["smr"]["mse"]["slower"]["mean"] > 0
    assert res["config"]["nss"]["task"] == "observed_steps" and res["summary"]["floor"]["slower"]["mean"] > 0
    assert main(["nss", "--config", "nss_uniform_grid", "--out", str(tmp_path / "g"), *TINY_NSS]) == 0
    assert len(json.loads((tmp_path / "g" / "nss.json").read_text())["claims"]) == 5
    args = [
        "bench",
        "--config",
        "bench",
        "--out",
        str(tmp_path / "b"),
        "--layers",
        "s4d,s4d+smr",
        "--L",
        "32",
    ]
    assert main([*args, "bench.repeats=1", "bench.warmup=0", "bench.d_model=8", "bench.d_state=4"]) == 0
    assert "s4d+smr" in capsys.readouterr().out and (tmp_path / "b" / "bench.json").is_file()


def _wiki(folder, text=" = Title = \n the quick brown fox jumps over the lazy dog .\n"):
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        (folder / name).write_text(text * 30)


def test_cli_lm_and_lra_offline_errors_and_demo(tmp_path, capsys):
    assert (
        main(["lm", "--config", "lm_demo", f"lm.data_dir={tmp_path / 'none'}", f"out_dir={tmp_path / 'o'}"])
        == 2
    )
    assert "wiki.train.raw" in capsys.readouterr().err
    _wiki(tmp_path)
    lm = ["lm", "--config", "lm_demo", "--no-progress"]  # options go before the key=value overrides
    data = [f"lm.data_dir={tmp_path}", f"out_dir={tmp_path / 'lm'}"]
    assert main([*lm, *data, "train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=2"]) == 0
    assert json.loads((tmp_path / "lm" / "results.json").read_text())["test_ppl"] > 1
    assert main([*lm, "--resume", *data, "train.max_steps=6"]) == 0
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 6
    # start weights: the final save_pretrained folder (safetensors) and a trainer checkpoint both load
    assert (
        main(
            [
                *lm,
                "--init",
                str(tmp_path / "lm" / "final"),
                *data,
                f"out_dir={tmp_path / 'lm2'}",
                "train.max_steps=1",
            ]
        )
        == 0
    )
    (ckpt,) = sorted((tmp_path / "lm" / "checkpoints").glob("ckpt-*.pt"))[-1:]
    assert main([*lm, "--init", str(ckpt), *data, f"out_dir={tmp_path / 'lm3'}", "train.max_steps=1"]) == 0
    assert main(["lra", "--config", "lra_listops_demo", "--data-dir", str(tmp_path / "none")]) == 2
    lo = tmp_path / "lra" / "listops-1000"
    lo.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (lo / f"basic_{split}.tsv").write_text(
            "Source\tTarget\n" + "( [MAX 2 9 ] )\t9\n( [MIN 2 9 ] )\t2\n" * 4
        )
    lra = ["lra", "--config", "lra_listops_demo", "--no-progress", "--data-dir", str(tmp_path / "lra")]
    assert main([*lra, f"out_dir={tmp_path / 'lra_out'}"]) == 0
    assert 0 <= json.loads((tmp_path / "lra_out" / "results.json").read_text())["test_accuracy"] <= 1


def test_bad_weights_and_checkpoints_give_one_line_and_run_nothing(tmp_path, capsys, evil_file):
    target = evil_file(tmp_path / "evil.pt")
    (tmp_path / "damaged.pt").write_bytes(b"\x80\x02garbage")
    save_safetensors({"nope": torch.zeros(2)}, tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"{not safetensors")
    _wiki(tmp_path)  # (a file that loads but does not fit is only found out once the model is built)
    for path, match in (
        ("evil.pt", "could run code"),
        ("damaged.pt", "damaged"),
        ("other.safetensors", "does not fit"),
        ("broken.safetensors", "broken.safetensors"),
    ):
        assert (
            main(["lm", "--config", "lm_demo", "--init", str(tmp_path / path), f"lm.data_dir={tmp_path}"])
            == 2
        )
        err = capsys.readouterr().err
        assert match in err and path in err and err.count("\n") == 1, err
    assert not target.exists()
    # a crafted checkpoint in the resume folder: skipped with a warning; all damaged -> one-line error
    evil_file(tmp_path / "r" / "checkpoints" / "ckpt-000000002.pt")
    args = ["lm", "--config", "lm_demo", "--resume", f"lm.data_dir={tmp_path}", f"out_dir={tmp_path / 'r'}"]
    assert main([*args, "train.max_steps=2"]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not target.exists()
    out_file = tmp_path / "a_file"
    out_file.write_text("x")
    assert main(["nss", "--config", "quick", "--out", str(out_file)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, evil_file):
    data = torch.randint(0, 30, (64, 12))
    sampler = StepSampler(64, 4, seed=0)

    def batch_fn(i):
        ids = data[sampler(i)]
        return {"input_ids": ids, "labels": ids}

    cfg = TrainConfig(
        lr=1e-2, max_steps=4, batch_size=4, checkpoint_every=2, log_every=1, eval_every=0, device="cpu"
    )
    torch.manual_seed(0)
    Trainer(tiny_lm(), cfg, batch_fn, out_dir=tmp_path, progress=False).train(stop_at=2)
    target = evil_file(tmp_path / "checkpoints" / "ckpt-000000003.pt")
    again = Trainer(tiny_lm(), cfg, batch_fn, out_dir=tmp_path, progress=False)
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint"):
        assert again.resume() and again.step == 2
    assert not target.exists()
    with pytest.raises(CheckpointError):
        for p in (tmp_path / "checkpoints").glob("ckpt-*.pt"):
            p.write_bytes(b"garbage")
        again.resume()


@pytest.mark.slow
def test_ctrl_c_of_nss_exits_130_within_5_seconds(tmp_path):
    """The thread pool is cancelled, not awaited (it used to take up to two minutes)."""
    exe = [
        sys.executable,
        "-m",
        "smr_ssm.cli",
        "nss",
        "--config",
        "quick",
        "--out",
        str(tmp_path),
        "nss.seeds=[0,1,2,3]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        exe, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=interruptible
    )
    for line in proc.stdout:  # wait until the trainings run
        if line.startswith("[nss] training"):
            break
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    assert rc == 130 and time.monotonic() - t0 < 5.0
    assert "interrupted" in proc.stderr.read() and not (tmp_path / "nss.json").exists()


def _res(seeds, base, smr, floor=0.001, r=0.5, norm=(1.2, 1.1), steps=None):
    """A fake run: per seed ``base``/``smr`` MSE per condition (train_range, slower, faster)."""
    conds = ("train_range", "slower", "faster")

    def ev(m):
        return {
            c: {"mse": m[i], "excess": m[i] - floor, "state_norm_ratio": norm[c != "slower"]}
            for i, c in enumerate(conds)
        }

    per = []
    for s in seeds:
        rec = {"seed": s, "floor": dict.fromkeys(conds, floor), "hold": dict.fromkeys(conds, 0.05)}
        rec["baseline"] = {"eval": ev(base)}
        rec["smr"] = {"eval": ev(smr), "scale_step": {"r_mean": r}}
        if steps:
            rec["baseline_steps"] = {"eval": ev(steps)}
        per.append(rec)
    return {"per_seed": per}


def test_quick_claims_are_computed_from_numbers():
    good = build_claims(
        _res(range(5), (0.010, 0.040, 0.03), (0.0101, 0.030, 0.02), norm=(1.1, 1.1), steps=(0.01, 0.02, 0.02))
    )
    assert len(good) == 9 and all(isinstance(c, Claim) for c in good) and all(c.holds for c in good)
    bad = build_claims(_res(range(5), (0.010, 0.040, 0.03), (0.02, 0.039, 0.031), r=0.1, norm=(1.3, 1.1)))
    assert [c.holds for c in bad] == [True, True, True, False, False, False, True, False]  # equal norms hold
    assert bad[2].paired["wins"] == 5 and bad[2].method_value == pytest.approx(0.039)
    # the excess claim needs a 10% cut of the excess: 0.038 vs 0.9 * 0.039
    assert bad[4].method_value == pytest.approx(0.038) and bad[4].baseline_value == pytest.approx(0.9 * 0.039)
    s5 = build_claims(
        _res(range(5), (0.01, 0.04, 0.03), (0.01, 0.03, 0.02), steps=(0.01, 0.02, 0.02)), "s5", "s5"
    )
    assert s5[0].claim.startswith("S5 ") and s5[2].method == "S5+SMR" and s5[-1].method == "S5 (true steps)"


def _grid_eval(same):
    return {
        "same": {"mse": same, "state_norm_ratio": 1.0},
        "jitter": {"mse": 2 * same, "state_norm_ratio": 1.0},
    }


def test_variant_claims_use_the_jitter_degradation():
    per = [
        {
            "seed": s,
            "hold": {"same": 0.05},
            "baseline": {"eval": _grid_eval(0.01), "degradation": {"jitter": db}},
            "smr": {"eval": _grid_eval(0.0105), "degradation": {"jitter": ds}},
        }
        for s, (db, ds) in enumerate(((2.0, 1.5), (2.0, 1.8), (2.0, 2.5)))
    ]
    claims = build_variant_claims({"per_seed": per})
    assert [c.holds for c in claims] == [True, True, True, True, True]
    assert claims[2].paired["wins"] == 2 and claims[2].paired["min_wins"] == 2


@pytest.mark.slow
def test_cli_lm_with_transformers_trainer(tmp_path):
    _wiki(tmp_path, " = Title = \n a small corpus for the transformers trainer path .\n")
    out = tmp_path / "hf"
    args = ["lm", "--config", "lm_demo", "--no-progress"]
    over = [f"lm.data_dir={tmp_path}", f"out_dir={out}", "lm.trainer=hf", "train.checkpoint_every=1"]
    assert main([*args, *over, "train.max_steps=2"]) == 0
    assert any((out / "hf").glob("checkpoint-*")) and (out / "final" / "config.json").is_file()
    assert main([*args, "--resume", *over, "train.max_steps=3"]) == 0
    assert json.loads((out / "results.json").read_text())["val_ppl"] > 1


def test_console_script_runs(tmp_path):
    res = run_cli("smr-ssm", ["show-config", "--config", "quick", "nss.noise=-1"], timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nss.noise" in res.stderr
