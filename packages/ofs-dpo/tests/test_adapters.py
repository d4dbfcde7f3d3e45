"""Adapter combination, copy and swap (COFS-DPO's combination; ours)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from ofs_dpo.adapters import (
    adapter_parameters,
    adapter_state_dict,
    combine_lora_adapters,
    combine_lora_state_dicts,
    copy_adapter,
    load_adapter_state_dict,
    lora_scaling,
    lowrank_factors,
    swap_adapters,
)
from ofs_dpo.data import tiny_gpt2

IDS = torch.tensor([[4, 9, 12, 30, 7, 5]])


@pytest.fixture
def pm(h, tok):
    model = get_peft_model(tiny_gpt2(len(tok), seed=0), h.lora_config(4), adapter_name="a")
    model.add_adapter("b", h.lora_config(4))
    model.eval()  # GPT-2 dropout would make logits random
    h.randomize_adapter(model, "a", seed=1)
    h.randomize_adapter(model, "b", seed=2)
    return model


def _logits(model, adapter):
    model.set_adapter(adapter)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("space", ["param", "delta"])
def test_one_hot_weights_reproduce_an_adapter(pm, space):
    combine_lora_adapters(pm, ["a", "b"], [1.0, 0.0], "c", space=space)
    assert torch.allclose(_logits(pm, "c"), _logits(pm, "a"), atol=1e-6)
    assert all(not p.requires_grad for p in adapter_parameters(pm, "c").values())


def test_delta_space_is_the_exact_weighted_sum_of_deltas(pm):
    combine_lora_adapters(pm, ["a", "b"], [0.3, 0.7], "c", space="delta")
    assert pm.peft_config["c"].r == 8
    for layer in _lora_layers(pm):
        want = 0.3 * layer.get_delta_weight("a") + 0.7 * layer.get_delta_weight("b")
        assert torch.allclose(layer.get_delta_weight("c"), want, atol=1e-6)


def test_delta_space_equals_peft_cat_and_differs_from_peft_linear(pm):
    combine_lora_adapters(pm, ["a", "b"], [0.3, 0.7], "ours", space="delta")
    pm.add_weighted_adapter(["a", "b"], [0.3, 0.7], "peft_cat", combination_type="cat")
    pm.add_weighted_adapter(["a", "b"], [0.3, 0.7], "peft_linear", combination_type="linear")
    for layer in _lora_layers(pm):
        ours = layer.get_delta_weight("ours")
        assert torch.allclose(ours, layer.get_delta_weight("peft_cat"), atol=1e-6)
    assert not all(
        torch.allclose(layer.get_delta_weight("ours"), layer.get_delta_weight("peft_linear"), atol=1e-4)
        for layer in _lora_layers(pm)
    )


def test_param_space_averages_factors_and_is_exact_for_identical_adapters(pm):
    combine_lora_adapters(pm, ["a", "b"], [0.25, 0.75], "c", space="param")
    a, b, c = (adapter_parameters(pm, n) for n in ("a", "b", "c"))
    for n, p in c.items():
        want = 0.25 * a[n.replace(".c.", ".a.")] + 0.75 * b[n.replace(".c.", ".b.")]
        assert torch.allclose(p, want, atol=1e-7)
    copy_adapter(pm, "a", "b")
    combine_lora_adapters(pm, ["a", "b"], [0.4, 0.6], "same", space="param")
    assert torch.allclose(_logits(pm, "same"), _logits(pm, "a"), atol=1e-6)


def test_state_dict_round_trip_and_copy_swap(pm):
    sd_a, sd_b = adapter_state_dict(pm, "a"), adapter_state_dict(pm, "b")
    swap_adapters(pm, "a", "b")
    assert all(torch.equal(adapter_state_dict(pm, "a")[k], sd_b[k]) for k in sd_a)
    assert all(torch.equal(adapter_state_dict(pm, "b")[k], sd_a[k]) for k in sd_a)
    load_adapter_state_dict(pm, "a", sd_a)
    assert all(torch.equal(adapter_state_dict(pm, "a")[k], sd_a[k]) for k in sd_a)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter_state_dict(pm, "a", {k: v for k, v in list(sd_a.items())[1:]})


def test_lowrank_factors_recover_a_low_rank_combination(pm, h):
    sds = [adapter_state_dict(pm, "a"), adapter_state_dict(pm, "b")]
    s = lora_scaling(pm.peft_config["a"])
    combined = combine_lora_state_dicts(sds, [0.5, 0.5], "delta", scalings=[s, s], new_scaling=1.0)
    # rank 8 combination factorised back to rank 8: exact; to rank 4: the best rank-4 approximation
    exact = lowrank_factors(combined, rank=8, scaling=1.0, target_scaling=s)
    for ka in (k for k in combined if "lora_A" in k):
        kb = ka.replace("lora_A", "lora_B")
        assert torch.allclose(s * exact[kb] @ exact[ka], combined[kb] @ combined[ka], atol=1e-5)
    approx = lowrank_factors(combined, rank=4, scaling=1.0, target_scaling=s)
    assert all(v.shape == sds[0][k].shape for k, v in approx.items())


def test_combination_errors(pm, h):
    with pytest.raises(ValueError, match="unknown adapter"):
        combine_lora_adapters(pm, ["a", "zzz"], [0.5, 0.5], "c")
    with pytest.raises(ValueError, match="weights"):
        combine_lora_adapters(pm, ["a", "b"], [1.0], "c")
    with pytest.raises(ValueError, match=">= 0"):
        combine_lora_adapters(pm, ["a", "b"], [-1.0, 2.0], "c")
    with pytest.raises(ValueError, match="space"):
        combine_lora_adapters(pm, ["a", "b"], [0.5, 0.5], "c", space="svd")
    pm.add_adapter("r8", h.lora_config(8))
    with pytest.raises(ValueError, match="same rank"):
        combine_lora_adapters(pm, ["a", "r8"], [0.5, 0.5], "c", space="param")
    combine_lora_adapters(pm, ["a", "r8"], [0.5, 0.5], "mixed", space="delta")  # delta space allows it
    with pytest.raises(ValueError, match="already exists"):
        combine_lora_adapters(pm, ["a", "b"], [0.5, 0.5], "a")
    with pytest.raises(ValueError, match="different keys"):
        combine_lora_state_dicts(
            [{"x.lora_A.weight": torch.zeros(1)}, {"y.lora_A.weight": torch.zeros(1)}], [1, 1]
        )
    with pytest.raises(TypeError, match="PeftModel"):
        adapter_state_dict(torch.nn.Linear(2, 2), "a")
