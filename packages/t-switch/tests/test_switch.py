import copy

import pytest
import torch

from papers_shared.errors import InputError
from t_switch import BinarySwitch, binarize, drop_by_sign, lora_task_vector, task_vector


def test_task_vector_rules(tiny):
    pre, fts = tiny
    tv = task_vector(pre, fts["t0"])
    assert not any("classifier" in n for n in tv)
    assert "temperature" in tv and tv["temperature"].dim() == 0
    sd = pre.state_dict()
    assert torch.allclose(tv["body.0.weight"], fts["t0"].body[0].weight.detach() - sd["body.0.weight"])
    tv2 = task_vector(pre.state_dict(), fts["t0"].state_dict(), exclude=())
    assert "classifier.weight" in tv2


def test_task_vector_errors(tiny):
    pre, fts = tiny
    bad = copy.deepcopy(fts["t0"]).state_dict()
    bad["body.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        task_vector(pre, bad)
    bad = dict(fts["t0"].state_dict())
    del bad["body.0.bias"]
    with pytest.raises(InputError, match="missing"):
        task_vector(pre, bad)
    bad = dict(fts["t0"].state_dict())
    bad["body.0.bias"] = bad["body.0.bias"].clone()
    bad["body.0.bias"][0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        task_vector(pre, bad)
    with pytest.raises(TypeError):
        task_vector(pre, [1, 2])


@pytest.mark.parametrize("r", [0.0, 0.5, 0.6, 0.9])
def test_binary_switch_properties(tiny, r):
    pre, fts = tiny
    tv = task_vector(pre, fts["t1"])
    dropped = drop_by_sign(tv, r)
    sw = BinarySwitch.from_task_vector(tv, drop_ratio=r)
    hat = sw.to_task_vector()
    for n, t in dropped.items():
        if t.dim() == 0:
            assert torch.equal(hat[n], t)  # 0-dim passthrough in full precision
            continue
        h = hat[n]
        assert torch.equal(torch.sign(h), torch.sign(t))
        assert torch.allclose(h[h != 0].abs(), torch.full_like(h[h != 0], sw.scales[n]))
        assert torch.allclose(h.norm(), t.norm(), rtol=1e-5)  # lambda = ||tau~|| / ||S||


def test_equal_magnitudes_reconstruct_exactly():
    tv = {"w": torch.tensor([[0.25, -0.25, 0.0], [0.25, 0.25, -0.25]])}
    sw = BinarySwitch.from_task_vector(tv, drop_ratio=0.0)
    assert torch.equal(sw.to_task_vector()["w"], tv["w"])
    assert sw.nnz == 5 and sw.density == pytest.approx(5 / 6)


def test_zero_tensors_skipped_and_global_scale():
    tv = {"a": torch.tensor([1.0, -3.0]), "z": torch.zeros(4), "s": torch.tensor(2.0)}
    sw = binarize(tv)
    assert "z" not in sw.signs and "s" in sw.passthrough
    assert sw.scales["a"] == pytest.approx((5.0) ** 0.5)
    assert "z" in binarize(tv, keep_zero_tensors=True).signs
    g = binarize({"a": torch.tensor([1.0, -3.0]), "b": torch.tensor([2.0])}, scale="global")
    assert g.scales["a"] == g.scales["b"] == pytest.approx((14 / 3) ** 0.5)
    with pytest.raises(ValueError):
        binarize(tv, scale="row")
    with pytest.raises(ValueError, match="NaN"):
        binarize({"a": torch.tensor([float("nan")])})


def test_lora_task_vector():
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    m = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    tv = lora_task_vector(m)
    assert len(tv) == 4 and all(("lora_A" in n) or ("lora_B" in n) for n in tv)
    with pytest.raises(ValueError):
        lora_task_vector(torch.nn.Linear(2, 2))
