import pytest
import torch

from t_switch import TaskVector, get_method
from t_switch.baselines import BASELINES, dare, emr_merging, tall_masks, task_arithmetic, ties_merging


def _pre_tvs():
    pre = {"w": torch.zeros(4), "b": torch.ones(2, 3)}
    g = torch.Generator().manual_seed(0)
    tvs = {
        t: TaskVector({"w": torch.randn(4, generator=g), "b": torch.randn(2, 3, generator=g)})
        for t in ("x", "y", "z")
    }
    return pre, tvs


def test_ta_alpha_one_single_task_is_finetuned():
    pre, tvs = _pre_tvs()
    res = task_arithmetic(pre, {"x": tvs["x"]}, alpha=1.0)
    p = res.params()
    assert torch.allclose(p["b"], pre["b"] + tvs["x"]["b"])


def test_ties_full_keep_single_task_is_task_vector():
    pre, tvs = _pre_tvs()
    for scope in ("global", "tensor"):
        res = ties_merging(pre, {"x": tvs["x"]}, k=1.0, alpha=1.0, trim_scope=scope)
        assert all(torch.allclose(res.delta()[n], tvs["x"][n]) for n in tvs["x"])


def test_ties_hand_example():
    pre = {"w": torch.zeros(3)}
    tvs = {
        "a": TaskVector({"w": torch.tensor([1.0, -2.0, 0.5])}),
        "b": TaskVector({"w": torch.tensor([3.0, 1.0, -0.4])}),
    }
    res = ties_merging(pre, tvs, k=1.0, alpha=1.0)
    # elected signs: +, -, +; disjoint means: (1+3)/2, -2, 0.5
    assert torch.allclose(res.delta()["w"], torch.tensor([2.0, -2.0, 0.5]))


def test_emr_single_task_reconstructs():
    pre, tvs = _pre_tvs()
    res = emr_merging(pre, {"x": tvs["x"]})
    assert res.info["rescalers"]["x"] == pytest.approx(1.0)
    assert all(torch.allclose(res.delta("x")[n], tvs["x"][n]) for n in tvs["x"])


def test_emr_hand_example():
    pre = {"w": torch.zeros(4)}
    a = torch.tensor([1.0, -2.0, 3.0, 0.0])
    b = torch.tensor([-3.0, -1.0, 1.0, 2.0])
    res = emr_merging(pre, {"a": TaskVector({"w": a}), "b": TaskVector({"w": b})})
    # mean = [-1, -1.5, 2, 1] -> eps = [-1, -1, +1, +1]; tau_uni = [-3, -2, 3, 2]
    # M_a = [0, 1, 1, 0], M_b = [1, 1, 1, 1]
    # gamma_a = mean|a| / mean|M_a tau_uni| = 1.5 / 1.25 ; gamma_b = 1.75 / 2.5
    ga, gb = res.info["rescalers"]["a"], res.info["rescalers"]["b"]
    assert ga == pytest.approx(1.5 / 1.25) and gb == pytest.approx(1.75 / 2.5)
    assert torch.allclose(res.delta("a")["w"], ga * torch.tensor([0.0, -2.0, 3.0, 0.0]))
    assert torch.allclose(res.delta("b")["w"], gb * torch.tensor([-3.0, -2.0, 3.0, 2.0]))
    with pytest.raises(KeyError):
        res.delta(None)


def test_dare_p0_is_ta_and_tall_single_task():
    pre, tvs = _pre_tvs()
    d = dare(pre, tvs, p=0.0, alpha=0.3).delta()
    t = task_arithmetic(pre, tvs, alpha=0.3).delta()
    assert all(torch.allclose(d[n], t[n]) for n in t)
    tall = tall_masks(pre, {"x": tvs["x"]}, lambda_t=0.4)  # tau_MTL = tau_x: mask keeps every non-zero
    assert all(torch.allclose(tall.delta("x")[n], tvs["x"][n]) for n in tvs["x"])


def test_registry_same_signature_and_errors():
    pre, tvs = _pre_tvs()
    for name, fn in BASELINES.items():
        res = fn(pre, tvs)
        assert res.tasks == ["x", "y", "z"]
        delta = res.delta("x")
        assert set(delta) <= {"w", "b"} and res.storage_bytes > 0, name
    with pytest.raises(KeyError, match="unknown merging method"):
        get_method("nope")
    with pytest.raises(ValueError):
        task_arithmetic(pre, {})
    with pytest.raises(ValueError, match="shape"):
        task_arithmetic(pre, {"x": TaskVector({"w": torch.zeros(5)})})
