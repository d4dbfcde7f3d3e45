import pytest
import torch

from sr_cis.clip_model import CLIPCandidateLargeModel
from sr_cis.slow_path import SlowPath

NAMES = {0: "cat", 1: "dog", 2: "deer", 3: "aquarium_fish"}


def test_tiny_clip_scores_are_log_probs_and_deterministic():
    lm = CLIPCandidateLargeModel.tiny(list(NAMES.values()), image_size=16)
    imgs = list(torch.rand(2, 3, 12, 12))  # resized to 16 inside
    s = lm.score_options(imgs, ["p", "q"], [["cat", "dog", "deer"], ["dog", "deer", "aquarium_fish"]])
    assert s.shape == (2, 3)
    assert torch.allclose(s.exp().sum(1), torch.ones(2), atol=1e-5)
    assert torch.equal(
        s, lm.score_options(imgs, ["p", "q"], [["cat", "dog", "deer"], ["dog", "deer", "aquarium_fish"]])
    )
    with pytest.raises(ValueError, match="NaN"):
        lm.score_options([torch.full((3, 8, 8), float("nan"))], ["p"], ["cat"])


def test_clip_slow_path_needs_loglik_and_never_describes():
    lm = CLIPCandidateLargeModel.tiny(list(NAMES.values()), image_size=16)
    with pytest.raises(TypeError, match="generate"):
        SlowPath(lm, NAMES, answer_mode="generate")
    sp = SlowPath(lm, NAMES, answer_mode="loglik")
    pred, _ = sp.decide(torch.rand(2, 3, 16, 16), torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.tensor([0, 1]))
    assert pred[0].item() in (0, 1, 2) and pred[1].item() in (1, 2, 3)
    with pytest.raises(TypeError, match="class_name_only"):
        sp.describe(torch.rand(1, 3, 16, 16), 0)


def test_system_falls_back_to_class_names_with_clip(small, tiny_cfg, make_task, names):
    from sr_cis.scenario import GaussianPixelGenerator
    from sr_cis.system import SRCIS

    tiny_cfg.text.describe_mode = "mllm"
    tiny_cfg.slow.answer_mode = "loglik"
    lm = CLIPCandidateLargeModel.tiny(list(names.values()), image_size=16)
    s = SRCIS(small, lm, GaussianPixelGenerator(2), tiny_cfg, names)
    s.train_task(make_task([0, 1], 40), 0)
    assert s.describe_mode == "class_name_only" and s.memory.text.for_class(0) == ["a photo of a zero"]
    prompts, _, _ = s.replay_prompts()
    assert prompts[0] == "a photo of a zero" and len(prompts) == 2 * tiny_cfg.text.n_desc
