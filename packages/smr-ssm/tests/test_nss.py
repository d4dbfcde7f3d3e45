"""NSS diagnostics and the sampling-shift experiment: conditions, models, the floor, the scale-step
correlation, threads equal a sequential run, cancellation, and the quick reproduction end to end."""

import threading

import pytest
import torch

from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.ssm.modules import validation_enabled
from smr_ssm import S4D, SSMBlock
from smr_ssm.config import ExperimentConfig
from smr_ssm.experiment import build_conditions, build_training_pool, run_nss
from smr_ssm.nss import (
    build_regressor,
    evaluate,
    nss_ratio,
    scale_step_correlation,
    state_norms,
    train_regressor,
)

TINY = [
    "train.max_steps=3",
    "train.batch_size=4",
    "nss.n_train=16",
    "nss.n_test=4",
    "nss.length=16",
    "model.d_model=8",
    "model.d_state=4",
    "nss.norm_sequences=2",
]


def tiny(name="quick", *over):
    return load_config(ExperimentConfig, resolve_config("smr_ssm", name), [*TINY, *over])


def test_state_norms_match_the_states_and_ratio():
    layer = S4D(4, 8, smr={"init": "random"})
    u = torch.randn(2, 30, 4)
    x = layer.states(u)
    assert torch.allclose(state_norms(layer, u), torch.sqrt((x.abs() ** 2).sum((-1, -2))))
    block = SSMBlock(4, "s4d", {"d_state": 8})
    assert torch.allclose(state_norms(block, u), state_norms(block.mixer, block.norm(u)))
    assert torch.allclose(nss_ratio(torch.tensor([[1.0, 2.0, 3.0, 10.0, 2.0]])), torch.tensor([5.0]))


def test_conditions_of_both_tasks():
    cfg = tiny("quick", "nss.length=40")
    conds = build_conditions(cfg.nss, seed=0)
    assert list(conds) == ["train_range", "slower", "faster"]
    for name, (lo, hi) in (("slower", (1.5, 2.5)), ("faster", (0.25, 0.5)), ("train_range", (0.5, 1.5))):
        steps = conds[name].steps
        assert steps.min() >= lo - 1e-6 and steps.max() <= hi + 1e-6
    assert build_training_pool(cfg.nss, 0).inputs.shape == (16, 40, 2)
    grid = tiny("nss_uniform_grid", "nss.length=20")
    conds = build_conditions(grid.nss, seed=0)
    assert list(conds) == ["same", "step_0.03", "step_0.015", "jitter"]
    assert conds["same"].floor == 0.0 and conds["jitter"].floor > 0
    assert torch.allclose(
        conds["step_0.03"].steps[:, 1:], torch.full_like(conds["step_0.03"].steps[:, 1:], 1.5)
    )


def test_baseline_and_smr_share_their_initial_weights_and_steps_host():
    cfg = tiny("quick", "model.smr=literal")  # a random SMR init must not shift the shared weights
    base, _ = build_regressor(cfg.model, "baseline", 3, 2)
    smr, _ = build_regressor(cfg.model, "smr", 3, 2)
    shared = base.state_dict()
    assert all(torch.equal(v, smr.state_dict()[k]) for k, v in shared.items())
    assert len(smr.state_dict()) > len(shared)
    ub, steps = build_regressor(cfg.model, "baseline_steps", 3, 2, steps_host="s5")
    assert steps and type(ub.layers[0].mixer).__name__ == "S5"


def test_threads_give_the_sequential_results_and_restore_switches():
    threads = torch.get_num_threads()
    seq = run_nss(tiny("quick", "nss.seeds=[0]", "nss.workers=1"), log=lambda m: None)
    par = run_nss(tiny("quick", "nss.seeds=[0]", "nss.workers=2"), log=lambda m: None)
    assert validation_enabled() and torch.get_num_threads() == threads
    for name in ("baseline", "smr", "baseline_steps"):
        a, b = seq["per_seed"][0][name]["eval"], par["per_seed"][0][name]["eval"]
        for cond in a:  # equal up to the reduction order of 1 vs 2 intra-op threads
            assert abs(a[cond]["mse"] - b[cond]["mse"]) <= 1e-5 * abs(a[cond]["mse"])
            assert a[cond]["excess"] == pytest.approx(a[cond]["mse"] - seq["per_seed"][0]["floor"][cond])
    rec = seq["per_seed"][0]
    assert rec["baseline"]["eval"]["slower"]["mse"] != rec["smr"]["eval"]["slower"]["mse"]
    assert -1 <= rec["smr"]["scale_step"]["r_mean"] <= 1 and "scale_step" not in rec["baseline"]


def test_scale_step_correlation_recovers_a_planted_step_gate():
    """An SMR whose gate is set to read the step channel exactly gives r = 1 with the true step."""
    cfg = tiny("quick", "model.norm=none")
    model, _ = build_regressor(cfg.model, "smr", 0, 2)
    smr = model.layers[0].smr
    with torch.no_grad():
        model.encoder.weight.zero_()
        model.encoder.weight[:, 1] = 1.0  # every channel carries tau_k
        model.encoder.bias.zero_()
        smr.weight.zero_()
        smr.weight[:, 0] = 1.0  # s_k = tau_k + b
    conds = build_conditions(cfg.nss, seed=0)
    res = scale_step_correlation(model, conds)
    assert res["r_mean"] == pytest.approx(1.0) and res["r_abs_channel"] == pytest.approx(1.0)
    assert res["slope"] == pytest.approx(1.0, rel=1e-4)
    ev = evaluate(model, conds, norm_sequences=0)
    assert set(ev) == set(conds) and "state_norm_ratio" not in ev["slower"]


def test_training_stops_when_asked():
    cfg = tiny("quick")
    model, _ = build_regressor(cfg.model, "baseline", 0, 2)
    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        train_regressor(model, cfg.train, 0, build_training_pool(cfg.nss, 0), should_stop=stop.is_set)


def test_steps_oracle_reaches_the_model_only_when_asked():
    cfg = tiny("nss_uniform_grid_s5_steps", "nss.length=24", "nss.seeds=[0]")
    model, steps = build_regressor(cfg.model, "baseline_steps", 0, 1)
    conds = build_conditions(cfg.nss, seed=0)
    plain = evaluate(model, conds, with_steps=False, norm_sequences=2)
    oracle = evaluate(model, conds, with_steps=steps, norm_sequences=2)
    # on the training grid every relative step is 1, so the true steps change nothing; off the grid they do
    assert abs(plain["same"]["mse"] - oracle["same"]["mse"]) <= 1e-6 * plain["same"]["mse"]
    for cond in ("step_0.03", "jitter"):
        assert abs(plain[cond]["mse"] - oracle[cond]["mse"]) > 1e-6 * plain[cond]["mse"]


@pytest.mark.slow  # a few seconds; the claim builders are unit-tested in test_trainer_cli
def test_quick_reproduction_end_to_end_with_a_tiny_budget(tmp_path, monkeypatch):
    import smr_ssm.quick as quick
    from papers_shared.results import QuickResult, write_result

    monkeypatch.setattr(quick, "quick_config", lambda quick=True: tiny("quick", "nss.seeds=[0,1]"))
    monkeypatch.setattr(
        quick, "variant_config", lambda quick=True: tiny("nss_uniform_grid", "nss.seeds=[0,1,2]")
    )
    res = quick.quick_reproduction(tmp_path, quick=True)
    assert isinstance(res, QuickResult) and res.package == "smr-ssm" and res.seeds == [0, 1]
    assert len(res.claims) == 9 + 5 and all(c.method_value is not None for c in res.claims)
    assert all(c.claim.startswith("[uniform-grid variant]") for c in res.claims[9:])
    summary, m = res.metrics["summary"], res.metrics
    assert summary["floor"]["slower"]["mean"] > 0 and "scale_step" in summary["smr"]
    # the floor, every model's excess over it and the scale-step correlation, for both tasks
    assert m["excess"]["smr"]["slower"]["mean"] == pytest.approx(
        summary["smr"]["mse"]["slower"]["mean"] - summary["floor"]["slower"]["mean"]
    )
    assert set(m["excess"]) == {"baseline", "smr", "baseline_steps"} and "smr" in m["scale_step"]
    assert len(m["diagnostics"]["excess_removed_slower"]) == 2
    assert m["uniform_grid_variant"]["floor"]["jitter"]["mean"] > 0
    assert "jitter" in m["uniform_grid_variant"]["diagnostics"]["mse_ratio_smr_over_baseline"]
    assert "Why:" in res.notes and "Uniform-grid variant" in res.notes
    assert res.claims[2].paired["n"] == 2 and res.claims[2].paired["seeds"] == [0, 1]
    assert all((tmp_path / p).is_file() and p.startswith("smr-ssm_") for p in res.plots)
    assert write_result(res, tmp_path).is_file()
