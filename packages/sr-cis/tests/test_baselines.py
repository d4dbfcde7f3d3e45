import pytest
import torch

from papers_shared.errors import ConfigError, InputError
from sr_cis.baselines import SeqLoRA, SimpleCIL, import_results_table, variant_config
from sr_cis.config import METHOD_NAMES, SRCISConfig
from sr_cis.experiment import build_method
from sr_cis.system import SRCIS


def test_variant_configs():
    base = SRCISConfig()
    v = variant_config(base, "per_task_lora")
    assert v.restructure.period is None and not v.caoad.enabled and not v.slow.enabled
    assert variant_config(base, "sr_cis_no_text").text.describe_mode == "class_name_only"
    assert variant_config(base, "sr_cis_random_route").caoad.random_fraction == 0.2
    assert not variant_config(base, "sr_cis_fast_only").caoad.enabled
    v = variant_config(base, "sr_cis_no_lora")
    assert not v.stm.train_lora and not v.restructure.train_lora
    assert variant_config(base, "sr_cis_pixel_replay").generator.gaussian_source == "task"
    assert base.restructure.period == 2 and base.caoad.enabled  # deep copies, base untouched
    with pytest.raises(ValueError, match="unknown SR-CIS variant"):
        variant_config(base, "sr_cis_magic")


def test_build_method_names(small, tiny_cfg, names):
    assert isinstance(build_method("sr_cis", tiny_cfg, small, None, names), SRCIS)
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("l2p", tiny_cfg, small, None, names)
    with pytest.raises(ConfigError, match="large model"):
        build_method("mllm_zero_shot", tiny_cfg, small, None, names)
    assert "seq_lora" in METHOD_NAMES and "simple_cil" in METHOD_NAMES


def test_random_route_fraction(small, tiny_cfg, make_task, names):
    cfg = variant_config(tiny_cfg, "sr_cis_random_route")
    s = SRCIS(small, None, None, cfg, names)
    s.train_task(make_task([0, 1], 60), 0)
    res = s.evaluate(make_task([0, 1]))
    assert abs(res["route_frac"] - 0.2) < 0.07


def test_simple_cil_is_ncm_on_frozen_features(small, tiny_cfg, make_task):
    m = SimpleCIL(small, tiny_cfg, norm="euclid")
    ds = make_task([0, 1, 2], 90)
    m.train_task(ds)
    x, y = ds.tensors
    with torch.no_grad():
        h = small.features(x, None)
    protos = torch.stack([h[y == c].mean(0) for c in (0, 1, 2)])
    ref = torch.tensor([0, 1, 2])[torch.cdist(h, protos).argmin(1)]
    assert torch.equal(m.predict(x), ref)


def test_seq_lora_prototype_init_of_new_rows(small, tiny_cfg, make_task):
    m = SeqLoRA(small, tiny_cfg, epochs=0)
    ds = make_task([0, 1], 40)
    m.train_task(ds, 0)
    x, y = ds.tensors
    with torch.no_grad():
        h = small.features(x, "seq")
    p = torch.stack([h[y == c].mean(0) for c in (0, 1)])
    assert torch.allclose(m.head.weight, p, atol=1e-5)
    assert torch.allclose(m.head.bias, -0.5 * (p * p).sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="init"):
        SeqLoRA(small, tiny_cfg, init="zeros")


def test_seq_lora_grows_head_and_keeps_old_rows_shape(small, tiny_cfg, make_task):
    m = SeqLoRA(small, tiny_cfg, epochs=1)
    m.train_task(make_task([0, 1], 40), 0)
    w0 = m.head.weight.detach().clone()
    m.train_task(make_task([2, 3], 40), 1)
    assert m.head.out_features == 4 and m.classes == [0, 1, 2, 3]
    assert not torch.equal(m.head.weight[:2], w0)  # shared head rows drift (the source of forgetting)
    assert set(m.predict(make_task([0, 1, 2, 3], 20).tensors[0]).tolist()) <= {0, 1, 2, 3}


def test_head_and_lora_switches(small, tiny_cfg, make_task, names):
    tiny_cfg.stm.train_head = False
    tiny_cfg.stm.train_lora = False
    tiny_cfg.stm.epochs = 2
    s = SRCIS(small, None, None, tiny_cfg, names)
    ds = make_task([0, 1], 60)
    reg = s.train_task(ds, 0)
    # nothing trainable: LoRA stays the identity and the head is the frozen-feature prototypes
    assert all(torch.count_nonzero(v) == 0 for k, v in small.adapter_state("stm_0").items() if "lora_B" in k)
    x, y = ds.tensors
    with torch.no_grad():
        h = small.features(x, None)
    p = torch.stack([h[y == c].mean(0) for c in (0, 1)])
    assert torch.allclose(reg.head.weight, p, atol=1e-5)
    assert torch.allclose(reg.head.bias, -0.5 * (p * p).sum(1), atol=1e-5)


def test_import_results_table(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"rows": [{"method": "coda_prompt", "dataset": "imagenet_r", "final_acc": 75.4}]}')
    rows = import_results_table(p)
    assert rows[0]["avg_acc"] is None and rows[0]["setting"] == "standard"
    p.write_text('[{"method": "x", "dataset": "y", "final_acc": 140}]')
    with pytest.raises(InputError, match="row 1, column 'final_acc'.*percentage"):
        import_results_table(p)
    p.write_text('[{"method": "x", "dataset": "y", "final_acc": 40}, {"method": "z", "dataset": "y"}]')
    with pytest.raises(InputError, match="row 2 has no 'final_acc'"):
        import_results_table(p)
    p.write_text("{not json")
    with pytest.raises(InputError, match="malformed JSON"):
        import_results_table(p)
    with pytest.raises(InputError, match=".csv or .json"):
        (tmp_path / "t.txt").write_text("x")
        import_results_table(tmp_path / "t.txt")
