import pytest
import torch

from papers_shared.mllm import ScriptedModel
from sr_cis.slow_path import SlowPath, parse_choice
from sr_cis.text_memory import CHOOSE_TEMPLATE, DESCRIBE_TEMPLATE, choose_prompt

NAMES = {0: "cat", 1: "dog", 2: "deer", 3: "aquarium_fish"}


def test_prompts_byte_for_byte():
    assert choose_prompt(["cat", "dog", "deer"]) == (
        "Answer which class the picture is belong to: cat, dog or deer? Please choose one most possible class."
    )
    assert CHOOSE_TEMPLATE.startswith("Answer which class the picture is belong to: {fill}?")
    assert DESCRIBE_TEMPLATE.format(name="cat") == (
        "Describe the scene of this image in one sentence. The main object is a cat."
    )
    with pytest.raises(ValueError):
        choose_prompt([])


def test_parsing_rule():
    assert parse_choice("It is a Dog.", [0, 1, 2], NAMES) == 1
    assert parse_choice("cat or dog", [0, 1, 2], NAMES) is None  # two hits -> fallback
    assert parse_choice("no idea", [0, 1, 2], NAMES) is None
    assert parse_choice("An AQUARIUM fish!", [3, 0], NAMES) == 3  # underscore and case


def test_decide_generate_and_fallback():
    lm = ScriptedModel(lambda im, p: "deer" if "deer" in p else "a cat or a dog")
    sp = SlowPath(lm, NAMES)
    imgs = torch.rand(2, 3, 8, 8)
    cands = torch.tensor([[0, 1, 2], [0, 1, -1]])
    pred, answers = sp.decide(imgs, cands, torch.tensor([0, 1]))
    assert pred.tolist() == [2, 1]  # second: two hits -> keep the fast prediction
    assert lm.calls[1][1] == choose_prompt(["cat", "dog"])


def test_decide_loglik_takes_argmax():
    lm = ScriptedModel("", scorer=lambda im, p, o: {"cat": -3.0, "dog": -1.0, "deer": -2.0}[o])
    sp = SlowPath(lm, NAMES, answer_mode="loglik")
    pred, _ = sp.decide(torch.rand(1, 3, 8, 8), torch.tensor([[0, 1, 2]]), torch.tensor([0]))
    assert pred.tolist() == [1]
    assert sp.zero_shot(torch.rand(2, 3, 8, 8), [0, 1, 2]).tolist() == [1, 1]


def test_describe_and_errors():
    lm = ScriptedModel(lambda im, p: "a photo " + p.split()[-1])
    sp = SlowPath(lm, NAMES)
    assert sp.describe(torch.rand(2, 3, 8, 8), 0) == ["a photo cat."] * 2
    with pytest.raises(KeyError, match="no class name"):
        sp.describe(torch.rand(1, 3, 8, 8), 9)
    with pytest.raises(ValueError, match="answer_mode"):
        SlowPath(lm, NAMES, answer_mode="vote")
    with pytest.raises(ValueError, match="batch size"):
        sp.decide(torch.rand(2, 3, 8, 8), torch.tensor([[0, 1, 2]]), torch.tensor([0, 1]))


def test_tiny_llava_runs_both_modes():
    from papers_shared.mllm import build_tiny_llava

    texts = [choose_prompt(list(NAMES.values())), DESCRIBE_TEMPLATE, *NAMES.values()]
    lm = build_tiny_llava(texts, seed=0)
    sp = SlowPath(lm, NAMES, max_new_tokens=4)
    imgs = torch.rand(2, 3, 16, 16)
    pred, answers = sp.decide(imgs, torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.tensor([0, 1]))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert pred[0].item() in (0, 1, 2) and pred[1].item() in (1, 2, 3)
    sp2 = SlowPath(lm, NAMES, answer_mode="loglik")
    p2, _ = sp2.decide(imgs, torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.tensor([0, 1]))
    p3, _ = sp2.decide(imgs, torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.tensor([0, 1]))
    assert torch.equal(p2, p3)  # deterministic
