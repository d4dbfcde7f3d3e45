"""NSS diagnostics (spec §3.7) and the sampling-shift experiment driver."""

import pytest
import torch

from papers_shared.ssm.modules import validation_enabled
from smr_ssm import S4D, SSMBlock
from smr_ssm.config import NSSConfig
from smr_ssm.nss import (
    build_conditions,
    build_nss_model,
    nss_ratio,
    run_nss,
    sampling_shift_eval,
    state_norms,
    train_nss_model,
)


def test_state_norms_match_the_states_and_ratio():
    layer = S4D(4, 8, smr={"init": "random"})
    u = torch.randn(2, 30, 4)
    x = layer.states(u)
    ref = torch.sqrt((x.abs() ** 2).sum((-1, -2)))
    assert torch.allclose(state_norms(layer, u), ref)
    block = SSMBlock(4, "s4d", {"d_state": 8})
    assert torch.allclose(state_norms(block, u), state_norms(block.mixer, block.norm(u)))
    norms = torch.tensor([[1.0, 2.0, 3.0, 10.0, 2.0]])
    assert torch.allclose(nss_ratio(norms), torch.tensor([5.0]))


def test_conditions_follow_the_protocol():
    cfg = NSSConfig(length=20, test_steps=[0.03, 0.015])
    conds = build_conditions(cfg, n=3, seed=0)
    assert list(conds) == ["same", "step_0.03", "step_0.015", "jitter"]
    steps = {k: torch.diff(t, dim=1) for k, (_, t) in conds.items()}
    assert torch.allclose(steps["same"], torch.full_like(steps["same"], 0.02))
    assert torch.allclose(steps["step_0.03"], torch.full_like(steps["step_0.03"], 0.03))
    assert steps["jitter"].min() >= 0.01 - 1e-12 and steps["jitter"].max() <= 0.03 + 1e-12
    assert all(v.shape == (3, 21, 1) for v, _ in conds.values())


def test_parallel_training_gives_the_sequential_results():
    threads = torch.get_num_threads()
    tiny = dict(
        seeds=[0],
        steps=3,
        n_train=16,
        n_test=4,
        length=16,
        batch_size=4,
        d_model=8,
        d_state=4,
        norm_sequences=2,
    )
    seq = run_nss(NSSConfig(workers=1, **tiny), log=lambda m: None)
    par = run_nss(NSSConfig(workers=2, **tiny), log=lambda m: None)
    assert validation_enabled() and torch.get_num_threads() == threads  # process-wide switches restored
    for label in ("baseline", "smr"):
        a, b = seq["per_seed"][0][label]["eval"], par["per_seed"][0][label]["eval"]
        for cond in a:  # equal up to the reduction order of 1 vs 2 intra-op threads
            assert abs(a[cond]["mse"] - b[cond]["mse"]) <= 1e-5 * abs(a[cond]["mse"])
    base, smr = seq["per_seed"][0]["baseline"]["eval"], seq["per_seed"][0]["smr"]["eval"]
    assert base["same"]["mse"] != smr["same"]["mse"]  # SMR trained away from identity


@pytest.mark.slow  # ~7 s on a loaded 2-core box; the claim builder is unit-tested in test_trainer_cli
def test_quick_reproduction_end_to_end_with_a_tiny_budget(tmp_path, monkeypatch):
    import smr_ssm.quick as quick
    from papers_shared.results import QuickResult, write_result

    tiny = NSSConfig(
        seeds=[0, 1],
        steps=2,
        n_train=8,
        n_test=4,
        length=16,
        batch_size=4,
        d_model=8,
        d_state=4,
        norm_sequences=2,
    )
    monkeypatch.setattr(quick, "quick_config", lambda quick=True: tiny)
    res = quick.quick_reproduction(tmp_path, quick=True)
    assert isinstance(res, QuickResult) and res.package == "smr-ssm" and res.seeds == [0, 1]
    assert len(res.claims) == 6 and all(c.method_value is not None for c in res.claims)
    summary = res.metrics["summary"]
    assert res.claims[0].method_value == summary["baseline"]["mse"]["same"]["mean"]
    assert res.claims[0].holds == (res.claims[0].method_value < res.claims[0].baseline_value)
    assert all((tmp_path / p).is_file() and p.startswith("smr-ssm_") for p in res.plots)
    assert write_result(res, tmp_path).is_file()


def test_oracle_timesteps_reach_the_s5_host_only_when_asked():
    cfg = NSSConfig(layer_type="s5", d_model=8, d_state=4, n_layer=1, length=24, oracle_timesteps=True)
    model = build_nss_model(cfg, None, seed=0)
    conds = build_conditions(cfg, n=3, seed=0)
    plain = sampling_shift_eval(model, conds, cfg.base_step, norm_sequences=2)
    oracle = sampling_shift_eval(model, conds, cfg.base_step, norm_sequences=2, with_timesteps=True)
    # on the training grid every relative step is 1, so the oracle changes nothing; off the grid it does
    assert abs(plain["same"]["mse"] - oracle["same"]["mse"]) <= 1e-6 * plain["same"]["mse"]
    for cond in ("step_0.03", "jitter"):
        assert abs(plain[cond]["mse"] - oracle[cond]["mse"]) > 1e-6 * plain[cond]["mse"]
    values = conds["jitter"][0]
    with pytest.raises(ValueError, match="train_times"):
        train_nss_model(cfg, model, 0, values)
    seen = []
    forward = model.forward
    model.forward = lambda **batch: seen.append(batch.get("timesteps")) or forward(**batch)
    cfg.steps, cfg.batch_size = 1, 2
    train_nss_model(cfg, model, 0, values, train_times=conds["jitter"][1])
    ts = seen[0]
    assert ts is not None and ts.shape == (2, 24) and 0.5 - 1e-6 <= ts.min() and ts.max() <= 1.5 + 1e-6
