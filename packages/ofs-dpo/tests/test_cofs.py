"""COFS-DPO and the continual baselines (arXiv 2406.05534 COFS-DPO; baselines ours)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model

from ofs_dpo.adapters import lora_scaling
from ofs_dpo.cofs import COFSDPO, ContinualRunner, dpo_config_from
from ofs_dpo.data import tiny_gpt2
from papers_shared.errors import CheckpointError


@pytest.fixture
def make_runner(tmp_path, tok, h):
    def factory(method="cofs", **kw):
        args = h.small_args(tmp_path, max_steps=3, logging_steps=100)
        return ContinualRunner(tiny_gpt2(len(tok), seed=0), tok, h.lora_config(4), args, method=method, **kw)

    return factory


def _fit_two(runner, domains):
    evals = {k: v["test"] for k, v in domains.items()}
    runner.fit_domain("toy_a", domains["toy_a"]["train"], evals)
    return runner.fit_domain("toy_b", domains["toy_b"]["train"], evals)


def _delta(sd, scaling):
    out = {}
    for ka in (k for k in sd if "lora_A" in k):
        kb = ka.replace("lora_A", "lora_B")
        out[ka] = scaling * sd[kb].float() @ sd[ka].float()
    return out


def test_cofs_uniform_param_combination_and_warm_start(make_runner, domains):
    r = make_runner("cofs")
    evals = {k: v["test"] for k, v in domains.items()}
    first = r.fit_domain("toy_a", domains["toy_a"]["train"], evals)
    assert first.weights == [1.0]
    assert all(torch.equal(r.deployed[k], r.memory[0][k]) for k in r.memory[0])
    fast0, slow0, leader0 = r._initial_state(1)
    assert fast0 is r.deployed and slow0 is r.deployed and leader0 == "fast"
    second = r.fit_domain("toy_b", domains["toy_b"]["train"], evals)
    assert second.weights == [0.5, 0.5]
    for k in r.deployed:
        assert torch.allclose(r.deployed[k], 0.5 * r.memory[0][k] + 0.5 * r.memory[1][k], atol=1e-7)
    assert set(second.scores) == {"toy_a", "toy_b"}
    s = r.summary()
    assert len(s["matrix"]) == 2 and math.isnan(s["matrix"][0][1])
    assert s["final_avg"] == pytest.approx((s["matrix"][1][0] + s["matrix"][1][1]) / 2)
    with pytest.raises(ValueError, match="already trained"):
        r.fit_domain("toy_a", domains["toy_a"]["train"])


def test_cofs_delta_space_is_exact(make_runner, domains, h):
    r = make_runner("cofs", combine_space="delta", weights=[0.25, 0.75])
    _fit_two(r, domains)
    assert r.deployed_weights == [0.25, 0.75]
    assert r.deployed_config.r == 8
    s = lora_scaling(h.lora_config(4))
    got = _delta(r.deployed, lora_scaling(r.deployed_config))
    d0, d1 = _delta(r.memory[0], s), _delta(r.memory[1], s)
    for k in got:
        assert torch.allclose(got[k], 0.25 * d0[k] + 0.75 * d1[k], atol=1e-6)
    # warm start of a 3rd domain: best rank-r factors of the rank-2r combination
    fast, _, _ = r._initial_state(2)
    assert all(v.shape == r.memory[0][k].shape for k, v in fast.items())


def test_ema_and_explicit_weights(make_runner, domains):
    r = make_runner("cofs", weights="ema", lam=0.3)
    _fit_two(r, domains)
    assert r.deployed_weights == pytest.approx([0.7, 0.3])
    with pytest.raises(ValueError, match=">= 0"):
        make_runner("cofs", weights=[1.0, -1.0])


def test_search_weights_maximise_the_validation_metric(make_runner, domains, monkeypatch):
    with pytest.raises(ValueError, match="validation_sets"):
        make_runner("cofs", weights="search")
    r = make_runner("cofs", weights="search", validation_sets={"toy_a": domains["toy_a"]["test"]})
    calls = []

    def fake_score(self, state, config, dataset):
        # score peaks where the deployed state is 30 % domain-1 / 70 % domain-2
        if len(self.memory) < 2:
            return 0.0
        key = next(iter(state))
        w1 = float(
            (state[key] - self.memory[1][key]).norm() / (self.memory[0][key] - self.memory[1][key]).norm()
        )
        calls.append(w1)
        return -abs(w1 - 0.3)

    monkeypatch.setattr(ContinualRunner, "_score_state", fake_score)
    _fit_two(r, domains)
    assert r.deployed_weights == pytest.approx([0.3, 0.7])
    assert len(calls) == 11  # the k=2 simplex grid with step 0.1


def test_sequential_baselines_carry_their_state(make_runner, domains):
    dpo = make_runner("seq_dpo")
    dpo.fit_domain("toy_a", domains["toy_a"]["train"])
    fast, slow, _ = dpo._initial_state(1)
    assert fast is dpo.last_fast and slow is None
    ofs = make_runner("seq_ofs")
    ofs.fit_domain("toy_a", domains["toy_a"]["train"])
    fast, slow, leader = ofs._initial_state(1)
    assert fast is ofs.last_fast and slow is ofs.last_slow and leader == ofs.last_leader
    assert not all(torch.equal(ofs.last_fast[k], ofs.last_slow[k]) for k in ofs.last_fast)
    cofs = ofs.branch("cofs")
    assert cofs.method == "cofs" and cofs.memory == ofs.memory and cofs.memory is not ofs.memory
    with pytest.raises(ValueError, match="first stages differ"):
        ofs.branch("seq_dpo")


def test_merge_baseline_uses_peft_cat(make_runner, domains, h):
    r = make_runner("merge_dpo", merge_type="cat")
    _fit_two(r, domains)
    s = lora_scaling(h.lora_config(4))
    got = _delta(r.deployed, lora_scaling(r.deployed_config))
    d0, d1 = _delta(r.memory[0], s), _delta(r.memory[1], s)
    for k in got:
        assert torch.allclose(got[k], 0.5 * d0[k] + 0.5 * d1[k], atol=1e-6)
    assert r._initial_state(1) == (None, None, "fast")  # per-domain adapters start from the base


def test_joint_baseline_trains_on_the_union(make_runner, domains):
    r = make_runner("joint_dpo")
    _fit_two(r, domains)
    assert [len(d) for d in r._joint_pool] == [32, 32]


def test_save_and_load_round_trip(make_runner, domains, tmp_path):
    r = make_runner("cofs")
    _fit_two(r, domains)
    path = r.save(tmp_path / "runner.pt")
    other = make_runner("cofs")
    other.load(path)
    assert (
        other.domains == r.domains
        and other.matrix == r.matrix
        and other.deployed_weights == r.deployed_weights
    )
    assert all(torch.equal(other.deployed[k], r.deployed[k]) for k in r.deployed)
    with pytest.raises(CheckpointError, match="method"):
        make_runner("seq_dpo").load(path)
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "missing.pt")


def test_base_model_is_restored_between_domains(make_runner, domains, tok):
    r = make_runner("cofs")
    _fit_two(r, domains)
    assert not any("lora" in n for n, _ in r.model.named_parameters())
    assert "forward" not in r.model.__dict__
    fresh = tiny_gpt2(len(tok), seed=0)
    for (n, p), (_, q) in zip(r.model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n
    get_peft_model(r.model, r.lora_config)  # can be wrapped again


def test_runner_errors(make_runner, tok, h, tmp_path):
    with pytest.raises(ValueError, match="method"):
        make_runner("ewc")
    with pytest.raises(ValueError, match="init_from"):
        make_runner("cofs", init_from="best")
    with pytest.raises(ValueError, match="combine_space"):
        make_runner("cofs", combine_space="svd")
    with pytest.raises(ValueError, match="weights"):
        make_runner("cofs", weights="softmax")
    with pytest.raises(RuntimeError, match="nothing deployed"):
        make_runner("cofs").evaluate({})
    pm = get_peft_model(tiny_gpt2(len(tok)), h.lora_config())
    with pytest.raises(TypeError, match="base model"):
        ContinualRunner(pm, tok, h.lora_config(), h.small_args(tmp_path))
    with pytest.raises(ValueError, match="cofs"):
        COFSDPO(tiny_gpt2(len(tok)), tok, h.lora_config(), h.small_args(tmp_path), method="seq_dpo")


def test_dpo_baseline_config_shares_the_ofs_settings(h, tmp_path):
    args = h.small_args(tmp_path, learning_rate=3e-4, beta=0.2)
    d = dpo_config_from(args)
    assert (d.learning_rate, d.beta, d.train_sampling_strategy) == (3e-4, 0.2, "sequential")
    assert not hasattr(d, "chase_alpha")
