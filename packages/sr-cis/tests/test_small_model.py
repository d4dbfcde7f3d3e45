import pytest
import torch

from sr_cis.small_model import check_images, resolve_targets


def test_targets_resolve_to_this_transformers_version(small):
    names = {n.rsplit(".", 1)[-1] for n, _ in small.backbone.named_modules()}
    assert set(small.targets) <= names
    with pytest.raises(ValueError, match="matches no Linear"):
        resolve_targets(small.backbone, ["nonexistent"])


def test_new_adapter_is_identity(small):
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        h0 = small.features(x, None)
        small.add_task_adapter("stm_0")
        h1 = small.features(x, "stm_0")
        h2 = small.features(x, None)
    assert torch.allclose(h0, h1, atol=1e-6)
    assert torch.allclose(h0, h2, atol=1e-6)


def test_training_one_adapter_leaves_everything_else_bit_identical(small):
    small.add_task_adapter("stm_0")
    with torch.no_grad():  # make stm_0 non-trivial
        for p in small.trainable_parameters("stm_0"):
            p.add_(0.1)
    small.add_task_adapter("stm_1")
    before = {k: v.clone() for k, v in small.peft.state_dict().items()}
    params = small.trainable_parameters("stm_1")
    assert all(p.requires_grad for p in params)
    # only stm_1 requires grad
    req = [n for n, p in small.peft.named_parameters() if p.requires_grad]
    assert req and all(".stm_1." in n for n in req)
    opt = torch.optim.SGD(params, lr=0.5)
    x = torch.rand(8, 3, 16, 16)
    for _ in range(2):
        loss = small.features(x, "stm_1").pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = small.peft.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".stm_1." in k for k in changed)
    # gradient flowed into the B factor of the fresh adapter
    assert any("lora_B" in k for k in changed)


def test_reading_other_adapter_keeps_training_intent(small):
    small.add_task_adapter("xa")
    small.add_task_adapter("xb")
    with torch.no_grad():
        small.features(torch.rand(2, 3, 16, 16), "xa")
    req = [n for n, p in small.peft.named_parameters() if p.requires_grad]
    assert req and all(".xb." in n for n in req)


def test_bad_images_and_names(small):
    with pytest.raises(ValueError, match="shape"):
        small.features(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        small.features(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(TypeError, match="float"):
        check_images(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 3, 16)
    small.add_task_adapter("xa")
    with pytest.raises(KeyError, match="unknown adapter"):
        small.features(torch.rand(1, 3, 16, 16), "zzz")
    with pytest.raises(ValueError, match="already exists"):
        small.add_task_adapter("xa")
    with pytest.raises(ValueError, match="last adapter"):
        small.delete_adapter("xa")


def test_adapter_state_round_trip(small):
    small.add_task_adapter("xa")
    with torch.no_grad():
        for p in small.trainable_parameters("xa"):
            p.normal_()
    st = small.adapter_state("xa")
    small.add_task_adapter("xb")
    small.load_adapter_state("xb", st)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(small.features(x, "xa"), small.features(x, "xb"))
    with pytest.raises(ValueError, match="mismatch"):
        small.load_adapter_state("xb", {"bogus": torch.zeros(1)})
