import copy

import pytest
import torch

from t_switch import AutoSwitch, BinarySwitch, KNNRouter, SwitchedModel, TaskSwitchBank, task_vector


@pytest.fixture
def bank(tiny):
    pre, fts = tiny
    sws = {t: BinarySwitch.from_task_vector(task_vector(pre, m), 0.6) for t, m in fts.items()}
    return pre, fts, sws, TaskSwitchBank(pre, sws)


def test_delta_one_hot_and_linearity(bank):
    pre, _, sws, b = bank
    for k, t in enumerate(b.tasks):
        d = b.delta(torch.nn.functional.one_hot(torch.tensor(k), 3).float())
        hat = sws[t].to_task_vector()
        assert set(d) == set(hat) and all(torch.equal(d[n], hat[n]) for n in d)
    w1, w2 = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([1.0, 0.0, -0.4])
    lhs = b.delta(2.0 * w1 + 3.0 * w2)
    d1, d2 = b.delta(w1), b.delta(w2)
    for n in lhs:
        assert torch.allclose(lhs[n], 2.0 * d1[n] + 3.0 * d2[n], atol=1e-6)
    assert b.delta({"t1": 1.0}).keys() == b.delta("t1").keys()


def test_switched_model_matches_deep_copy(bank):
    pre, _, sws, b = bank
    model = SwitchedModel(pre, b)
    x = torch.randn(5, 6)
    assert torch.equal(model(x, weights=torch.zeros(3)), pre(x))  # zero weights: bit-exact pre-trained
    for t in b.tasks:
        ref = copy.deepcopy(pre)
        with torch.no_grad():
            for n, p in ref.named_parameters():
                if n in sws[t].names:
                    p.copy_(pre.state_dict()[n] + sws[t].tensor(n))
        assert torch.equal(model(x, weights=t), ref(x))
    assert all(torch.equal(p, q) for p, q in zip(pre.parameters(), copy.deepcopy(pre).parameters()))


def test_cache_reuses_assembly(bank):
    _, _, _, b = bank
    p1 = b.params("t0")
    assert b.params(torch.tensor([1.0, 0.0, 0.0])) is p1
    b.params("t1"), b.params("t2")  # evicts t0 (cache_size=2)
    assert b.params("t0") is not p1


def test_overrides_and_bank_errors(bank):
    pre, fts, sws, b = bank
    model = SwitchedModel(pre, b)
    x = torch.randn(2, 6)
    head = {
        "classifier.weight": fts["t2"].classifier.weight.detach(),
        "classifier.bias": fts["t2"].classifier.bias.detach(),
    }
    out = model(x, weights="t2", overrides=head)
    assert not torch.equal(out, model(x, weights="t2"))
    with pytest.raises(KeyError):
        b.weight_vector("nope")
    with pytest.raises(ValueError, match="shape"):
        b.weight_vector(torch.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        b.weight_vector(torch.tensor([float("nan"), 0, 0]))
    bad = BinarySwitch({"body.0.weight": torch.zeros(2, 2, dtype=torch.int8)}, {"body.0.weight": 1.0})
    with pytest.raises(ValueError, match="shape"):
        TaskSwitchBank(pre, {"x": bad})


def test_auto_switch_routes_and_per_sample_matches(bank):
    pre, _, _, b = bank
    model = SwitchedModel(pre, b)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=g) * 10
    qx = torch.cat([centers[k] + torch.randn(10, 6, generator=g) for k in range(3)])
    feat = lambda x: x  # noqa: E731 - identity features: clusters in input space
    router = KNNRouter(k=5).fit(feat(qx), torch.arange(3).repeat_interleave(10))
    x = torch.cat([centers[0] + 0.1 * torch.randn(3, 6), centers[2] + 0.1 * torch.randn(2, 6)])
    auto = AutoSwitch(model, router, feature_fn=feat, mode="hard", granularity="sample")
    y = auto(x)
    assert torch.allclose(y[:3], model(x[:3], weights="t0"))
    assert torch.allclose(y[3:], model(x[3:], weights="t2"))
    soft = AutoSwitch(model, router, feature_fn=feat)
    ys = soft(x)
    assert torch.allclose(ys, model(x, weights=torch.tensor([0.6, 0.0, 0.4])))


def test_lora_product_vs_factors():
    from peft import LoraConfig, get_peft_model

    from t_switch import lora_task_vector, lora_zero_base

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    m = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    sws = {}
    for t in ("a", "b"):
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora" in n:
                    p.copy_(torch.randn(p.shape))
        sws[t] = BinarySwitch.from_task_vector(lora_task_vector(m), 0.0)
    zero = lora_zero_base(m)
    x = torch.randn(3, 4)
    w = torch.tensor([0.3, 0.7])
    fac = SwitchedModel(m, TaskSwitchBank(zero, sws, lora_mix="factors"))
    prod = SwitchedModel(m, TaskSwitchBank(zero, sws, lora_mix="product"))
    a_name = next(n for n in sws["a"].signs if "0.lora_A" in n)
    b_name = a_name.replace("lora_A", "lora_B")
    P = prod.bank.params(w)
    bw = sum(float(w[i]) * sws[t].tensor(b_name) @ sws[t].tensor(a_name) for i, t in enumerate("ab"))
    assert torch.allclose(P[b_name] @ P[a_name], bw, atol=1e-6)  # sum_k w_k B_k A_k
    F = fac.bank.params(w)
    mixed = (0.3 * sws["a"].tensor(b_name) + 0.7 * sws["b"].tensor(b_name)) @ (
        0.3 * sws["a"].tensor(a_name) + 0.7 * sws["b"].tensor(a_name)
    )
    assert torch.allclose(F[b_name] @ F[a_name], mixed, atol=1e-6)  # B(w) A(w)
    assert prod(x, weights=w).shape == fac(x, weights=w).shape == (3, 2)
    assert torch.allclose(prod(x, weights="a"), fac(x, weights="a"), atol=1e-6)  # one-hot: identical


def test_fusion_bench_style_pool(tiny):
    from t_switch.integrations.fusion_bench import t_switch_from_pool

    pre, fts = tiny

    class Pool:  # the duck-typed part of fusion_bench.BaseModelPool
        model_names = list(fts)

        def load_model(self, name):
            return fts[name]

        def load_pretrained_model(self):
            return pre

    res = t_switch_from_pool(Pool(), drop_ratio=0.6)
    x = torch.randn(2, 6)
    assert list(res.switches) == list(fts)
    assert res.switched(x, weights="t1").shape == (2, 3)
    with pytest.raises(TypeError, match="model pool"):
        t_switch_from_pool(object())
