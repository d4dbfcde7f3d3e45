import time

import pytest
import torch

from icl_vmf.interaction import InteractionStats, InteractiveClassifier
from icl_vmf.odi import VMFOutlierDetector
from icl_vmf.system2 import (
    DESCRIBE_PROMPT,
    MINIGPT4_TEMPLATE,
    PUREMM_TEMPLATE,
    MLLMSystem2,
    OracleSystem2,
    ScriptedSystem2,
    TwoTurnSystem2,
    build_system2,
    format_candidates,
    format_prompt,
    parse_answer,
)
from papers_shared.mllm import ScriptedModel

NAMES = ["cat", "dog", "deer", "aquarium_fish", "caterpillar", "t-shirt"]


def test_prompt_templates_byte_for_byte():
    fill = format_candidates(["cat", "dog", "deer"])
    assert fill == "cat, dog or deer"
    assert format_prompt(["cat", "dog", "deer"]) == (
        "Answer which class the picture is belong to: cat, dog or deer? Please choose one most possible class."
    )
    assert format_prompt(["cat", "dog", "deer"], MINIGPT4_TEMPLATE) == (
        "From your description, answer which category the picture is belong to: cat, dog or deer? "
        "Please choose one most possible category."
    )
    assert DESCRIBE_PROMPT == "Describe the the given image."
    assert format_candidates(["cat", "dog"]) == "cat or dog"
    with pytest.raises(ValueError):
        format_candidates([])


def test_parse_answer_rules():
    c = ["cat", "dog", "deer"]
    assert parse_answer("It is a Cat.", c) == 0
    assert parse_answer("cat or dog", c) is None
    assert parse_answer("no idea", c) is None
    assert parse_answer("aquarium fish", ["aquarium_fish", "bee"]) == 0
    assert parse_answer("a caterpillar", ["cat", "caterpillar"]) is None
    assert parse_answer("a caterpillar", ["cat", "caterpillar"], mode="word") == 1
    # the code's parser keeps non-letters in names: "t-shirt" can never be matched
    assert parse_answer("A T-shirt.", ["t-shirt", "coat"]) == 0
    assert parse_answer("A T-shirt.", ["t-shirt", "coat"], legacy=True) is None
    # MiniGPT-4 legacy test: raw and case-sensitive
    assert parse_answer("It is a Cat.", c, style="minigpt4", legacy=True) is None
    assert parse_answer("It is a cat.", c, style="minigpt4", legacy=True) == 0


class _FixedScores:
    """System1 stand-in: fixed scores for a batch, class ids 0..K-1."""

    def __init__(self, scores):
        self.s = torch.as_tensor(scores, dtype=torch.float32)

    def __call__(self, x):
        return self.s[: x.shape[0]], torch.arange(self.s.shape[1])


def _scores_with_outliers():
    # 8 samples over 4 classes; samples 6 and 7 have low best scores (flagged by ODI)
    s = torch.full((8, 4), -0.5)
    for i in range(6):
        s[i, i % 4] = 0.9
    s[6] = torch.tensor([0.05, 0.1, 0.0, -0.1])  # top-2 = classes 1, 0
    s[7] = torch.tensor([0.1, 0.0, 0.05, -0.2])  # top-2 = classes 0, 2
    return s


def test_oracle_fixes_flagged_samples_with_truth_in_topk_and_keeps_others():
    s = _scores_with_outliers()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 0, 3])  # sample 6: truth 0 in top-2; sample 7: truth 3 not in top-2
    clf = InteractiveClassifier(
        _FixedScores(s), OracleSystem2(1.0), VMFOutlierDetector(), k=2, class_names=NAMES[:4]
    )
    pred, info = clf.predict(torch.zeros(8, 3, 4, 4), y)
    assert info.hard.tolist() == [False] * 6 + [True, True]
    assert info.candidates == [[1, 0], [0, 2]]
    assert pred[6] == 0  # fixed (System1 said 1)
    assert pred[7] in (0, 2)  # truth not offered: a wrong candidate is named
    assert torch.equal(pred[:6], s[:6].argmax(1))  # unflagged keep System1
    stats = InteractionStats()
    stats.update(info, pred, y)
    d = stats.as_dict()
    assert d["hard"] == 2 and d["routed"] == 2 and d["fixed"] == 1 and d["true_in_candidates"] == 1


def test_oracle_accuracy_on_flagged_samples_with_truth_in_topk_is_total():
    torch.manual_seed(0)
    n, K = 64, 6
    s = torch.rand(n, K) * 0.2 + 0.7
    s[::5] -= 0.6  # a group of clearly low-scoring samples
    y = torch.randint(0, K, (n,))
    clf = InteractiveClassifier(
        _FixedScores(s), OracleSystem2(1.0), VMFOutlierDetector(), k=3, class_names=NAMES
    )
    pred, info = clf.predict(torch.zeros(n, 3, 2, 2), y)
    hard = info.hard.nonzero().flatten().tolist()
    assert hard
    covered = [i for j, i in enumerate(hard) if int(y[i]) in info.candidates[j]]
    assert covered and all(int(pred[i]) == int(y[i]) for i in covered)
    assert torch.equal(pred[~info.hard], info.system1_pred[~info.hard])


def test_gibberish_system2_falls_back_to_system1_everywhere():
    s = _scores_with_outliers()
    gib = ScriptedSystem2(lambda im, p: "purple monkey dishwasher 42")
    clf = InteractiveClassifier(_FixedScores(s), gib, VMFOutlierDetector(), k=3, class_names=NAMES[:4])
    pred, info = clf.predict(torch.zeros(8, 3, 4, 4))
    assert torch.equal(pred, info.system1_pred) and info.hard.sum() == 2
    assert info.system2_choice == [None, None] and not info.changed.any()
    # only flagged samples are sent to System2
    assert len(gib.mllm.calls) == 2


def test_system2_skipped_when_disabled_and_names_required():
    s = _scores_with_outliers()
    calls = ScriptedSystem2("cat")
    clf = InteractiveClassifier(_FixedScores(s), calls, k=2, class_names=NAMES[:4])
    pred, info = clf.predict(torch.zeros(8, 3, 4, 4), use_system2=False)
    assert calls.mllm.calls == [] and torch.equal(pred, info.system1_pred)
    with pytest.raises(ValueError, match="class_names"):
        InteractiveClassifier(_FixedScores(s), calls)


def test_hf_system2_reports_a_missing_model_offline(monkeypatch):
    from icl_vmf.system2 import HFVisionLanguageSystem2
    from papers_shared.data import DatasetNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="llava"):
        HFVisionLanguageSystem2("llava-hf/llava-1.5-7b-hf-not-cached-xyz", local_files_only=True)


def test_loglik_mode_takes_the_best_scored_candidate():
    model = ScriptedModel("x", scorer=lambda im, p, o: {"cat": -3.0, "dog": -1.0, "deer": -2.0}[o])
    s2 = MLLMSystem2(model, answer_mode="loglik")
    out = s2.choose([None], [["cat", "dog", "deer"]])
    assert out.choices == [1] and out.raw == ["dog"]


def test_two_turn_protocol_with_scripted_model():
    seen = []

    def answer(im, prompt):
        seen.append(prompt)
        return "a small furry animal" if prompt == DESCRIBE_PROMPT else "Dog, I think."

    s2 = TwoTurnSystem2(ScriptedModel(answer))
    out = s2.choose([None], [["cat", "dog"]])
    assert out.choices == [1]
    assert seen[0] == DESCRIBE_PROMPT
    assert seen[1].startswith(DESCRIBE_PROMPT + "\na small furry animal\nFrom your description")


@pytest.fixture(scope="module")
def tiny_llava_system2():
    from icl_vmf.config import System2Config

    return build_system2(System2Config(backend="tiny", max_new_tokens=8, k=3), "cpu", NAMES)


def test_tiny_llava_system2_answers_one_string_per_image_offline(tiny_llava_system2, monkeypatch, system1):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    imgs = [torch.rand(3, 16, 16) for _ in range(3)]
    raw = tiny_llava_system2.mllm.generate(imgs, [PUREMM_TEMPLATE.format(fill="cat, dog or deer")] * 3, 6)
    assert len(raw) == 3 and all(isinstance(a, str) for a in raw)
    # a whole interactive prediction through System1 + ODI + tiny LLaVA on CPU
    system1.memory.consolidate(0)
    system1.memory.consolidate(1)
    system1.memory.consolidate(2)
    det = VMFOutlierDetector(mode="random", random_fraction=0.5, seed=0)
    clf = InteractiveClassifier(system1, tiny_llava_system2, det, k=3, class_names=NAMES)
    t0 = time.perf_counter()
    pred, info = clf.predict(torch.rand(8, 3, 16, 16))
    assert time.perf_counter() - t0 < 10
    assert len(info.system2_raw) == int(info.hard.sum()) > 0
    parsed = [c for c in info.system2_choice if c is not None]
    assert all(c in cands for c, cands in zip(info.system2_choice, info.candidates) if c is not None)
    assert pred.shape == (8,) and len(parsed) <= len(info.system2_raw)


def test_tiny_llava_two_turn_uses_one_conversation(tiny_llava_system2):
    s2 = TwoTurnSystem2(tiny_llava_system2.mllm, max_new_tokens=4)
    text = s2._conversation("a cat", "question?")
    assert text.count("<image>") == 1 and text.endswith("question? ASSISTANT:")
    out = s2.choose([torch.rand(3, 16, 16)], [["cat", "dog"]])
    assert len(out.raw) == 1
    assert (
        TwoTurnSystem2(tiny_llava_system2).mllm is tiny_llava_system2.mllm
    )  # TwoTurnSystem2(inner) reuses the model


def test_clip_candidate_system2_from_tiny_config():
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from icl_vmf.system2 import CLIPCandidateSystem2
    from papers_shared.mllm import vocabulary_from_texts, word_level_tokenizer

    tok = word_level_tokenizer(vocabulary_from_texts(["a photo of a cat dog deer ."]))
    cfg = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id),
        vision_config=CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(cfg)
    proc = CLIPProcessor(
        CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}), tok
    )
    s2 = CLIPCandidateSystem2(model, proc)
    out = s2.choose(
        [torch.rand(3, 16, 16), torch.rand(3, 16, 16)], [["cat", "dog", "deer"], ["dog", "deer", "cat"]]
    )
    assert all(c in (0, 1, 2) for c in out.choices)  # never falls back
    assert out.raw == [["cat", "dog", "deer"][out.choices[0]], ["dog", "deer", "cat"][out.choices[1]]]
