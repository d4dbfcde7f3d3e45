import pytest
import torch

from sr_cis.scenario import GaussianPixelGenerator
from sr_cis.system import SRCIS, restructure_due


def _random_adapters(small, names, seed=0):
    g = torch.Generator().manual_seed(seed)
    for n in names:
        small.add_task_adapter(n)
        with torch.no_grad():
            for p in small.trainable_parameters(n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    small.freeze_all()


@pytest.mark.parametrize("combination", ["cat", "svd"])
def test_merge_is_exact_weighted_sum_of_deltas(small, combination):
    _random_adapters(small, ["stm_0", "stm_1", "stm_2"])
    w = [0.5, 0.3, 0.2]
    ref = {n: small.delta_weights(n) for n in ["stm_0", "stm_1", "stm_2"]}
    # svd with full rank (sum of ranks) is exact too
    small.merge_adapters(["stm_0", "stm_1", "stm_2"], w, "ltm_1", combination, svd_rank=12)
    merged = small.delta_weights("ltm_1")
    assert set(merged) == set(ref["stm_0"])
    for k in merged:
        expect = sum(wi * ref[n][k] for wi, n in zip(w, ref))
        assert torch.allclose(merged[k], expect, atol=1e-5), k


def test_single_adapter_merge_is_exact_copy(small):
    _random_adapters(small, ["stm_0"])
    ref = small.delta_weights("stm_0")
    small.merge_adapters(["stm_0"], [1.0], "ltm_1", "cat")
    for k, v in small.delta_weights("ltm_1").items():
        assert torch.allclose(v, ref[k], atol=1e-6)


def test_merge_rejects_linear(small):
    _random_adapters(small, ["stm_0", "stm_1"])
    with pytest.raises(ValueError, match="exact merges"):
        small.merge_adapters(["stm_0", "stm_1"], [0.5, 0.5], "m", "linear")


def test_restructure_due():
    assert [restructure_due(2, t, 5) for t in range(5)] == [False, True, False, True, False]
    assert [restructure_due("end", t, 3) for t in range(3)] == [False, False, True]
    assert not any(restructure_due(None, t, 3) for t in range(3))
    with pytest.raises(ValueError, match="period"):
        restructure_due(0, 1, 3)


class RecordingGenerator(GaussianPixelGenerator):
    def __init__(self):
        super().__init__(rank=2)
        self.prompts = []

    def generate(self, prompts, seeds):
        self.prompts += list(prompts)
        return super().generate(prompts, seeds)


def test_restructure_invariants_and_frozen_backbone(small, tiny_cfg, make_task, names):
    from papers_shared.mllm import ScriptedModel

    tiny_cfg.text.describe_mode = "mllm"
    tiny_cfg.text.n_desc = 3
    counter = iter(range(10_000))
    lm = ScriptedModel(lambda im, p: f"scene number {next(counter)}")  # unique descriptions
    gen = RecordingGenerator()
    sys_ = SRCIS(small, lm, gen, tiny_cfg, names)
    backbone_before = {k: v.clone() for k, v in small.backbone.state_dict().items() if "lora_" not in k}
    sys_.train_task(make_task([0, 1], 120), 0)
    sys_.train_task(make_task([2, 3], 120), 1)
    assert len(sys_.memory.text.for_class(2)) == 3  # n_desc descriptions per class
    rep = sys_.restructure()
    assert small.adapters == [rep.new_adapter] == ["ltm_1"]
    assert sys_.memory.ltm.classes == [0, 1, 2, 3] and not sys_.memory.stm
    assert rep.prompts_per_class == {0: 3, 1: 3, 2: 3, 3: 3}
    assert len(gen.prompts) == 4 * 3
    for c in range(4):  # every stored description is replayed exactly once per restructuring
        for d in sys_.memory.text.for_class(c):
            assert gen.prompts.count(f"{names[c]}, {d}") == 1
    # second round: LTM + a new STM merge into one adapter again; text memory is kept
    sys_.train_task(make_task([4, 5], 120), 2)
    rep2 = sys_.restructure()
    assert rep2.merged == ["ltm_1", "stm_2"] and small.adapters == ["ltm_2"]
    assert sys_.memory.ltm.classes == [0, 1, 2, 3, 4, 5] and sys_.memory.ltm.tasks == [0, 1, 2]
    assert sys_.memory.text.classes == [0, 1, 2, 3, 4, 5]
    after = {
        k.replace(".base_layer", ""): v for k, v in small.backbone.state_dict().items() if "lora_" not in k
    }
    assert set(after) == set(backbone_before)
    for k, v in backbone_before.items():
        assert torch.equal(v, after[k]), k


def test_restructure_without_generator_errors(small, tiny_cfg, make_task, names):
    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 60), 0)
    with pytest.raises(ValueError, match="generator"):
        s.restructure()


def test_describe_mode_mllm_needs_model(small, tiny_cfg, make_task, names):
    tiny_cfg.text.describe_mode = "mllm"
    s = SRCIS(small, None, None, tiny_cfg, names)
    with pytest.raises(ValueError, match="large model"):
        s.train_task(make_task([0, 1], 60), 0)
