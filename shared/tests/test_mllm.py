import numpy as np
import pytest
import torch

from papers_shared.data import DatasetNotFoundError
from papers_shared.mllm import (
    HFImageTextModel,
    MultimodalLM,
    ScriptedModel,
    build_tiny_llava,
    match_single_option,
    to_pil_image,
    vocabulary_from_texts,
    word_level_tokenizer,
)

PROMPT = (
    "Answer which class the picture is belong to: cat, dog or deer? Please choose one most possible class."
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the tiny model's matrices are a few dozen wide: thread hand-offs cost more than the maths
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llava([PROMPT], words=["aquarium_fish"], seed=0, batch_size=4)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 16, 16, generator=g) for _ in range(3)]


def test_tiny_llava_generates_one_string_per_image_offline(tiny, images, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tiny.generate(images, [PROMPT] * 3, max_new_tokens=6)
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(a, str) for a in out)
    assert isinstance(tiny, MultimodalLM)
    # every generated word comes from the in-memory vocabulary (no <unk>, no special token)
    vocab = set(tiny.tokenizer.get_vocab())
    for a in out:
        assert all(w in vocab for w in a.split()) and "<" not in a


def test_prompt_uses_chat_template_and_image_placeholder(tiny):
    text = tiny.format_prompt(PROMPT)
    assert text == f"USER: <image>\n{PROMPT} ASSISTANT:"
    enc = tiny.processor(images=[to_pil_image(torch.zeros(3, 16, 16))], text=[text], return_tensors="pt")
    n_img = int((enc["input_ids"] == tiny.model.config.image_token_id).sum())
    assert n_img == 16  # (16 / 4)^2 patches, CLS dropped
    raw = build_tiny_llava([PROMPT], chat_template=False)
    assert raw.format_prompt(PROMPT) == f"<image>\n{PROMPT}"


def test_greedy_generation_is_deterministic_and_batch_invariant(tiny, images):
    a = tiny.generate(images, [PROMPT] * 3, max_new_tokens=6)
    b = tiny.generate(images, [PROMPT] * 3, max_new_tokens=6)
    single = [tiny.generate([im], [PROMPT], max_new_tokens=6)[0] for im in images]
    assert a == b == single
    same_seed = build_tiny_llava([PROMPT], words=["aquarium_fish"], seed=0)
    assert same_seed.generate(images[:1], [PROMPT], max_new_tokens=6) == a[:1]
    assert all(torch.equal(p, q) for p, q in zip(same_seed.model.parameters(), tiny.model.parameters()))


def test_score_options_shape_and_hand_computed_loglik(tiny, images):
    options = [["cat", "dog", "deer"], ["dog", "deer", "cat"], ["deer", "cat", "dog"]]
    s = tiny.score_options(images, [PROMPT] * 3, options)
    assert s.shape == (3, 3) and s.dtype == torch.float32 and torch.isfinite(s).all() and (s < 0).all()
    # hand computation for sample 1, option "deer": one unpadded forward pass, gather the option token
    tok = tiny.tokenizer
    enc = tiny.processor(
        images=[to_pil_image(images[1])], text=[tiny.format_prompt(PROMPT) + " deer"], return_tensors="pt"
    )
    with torch.no_grad():
        logits = tiny.model(**enc).logits[0]
    deer = tok.convert_tokens_to_ids("deer")
    assert int(enc["input_ids"][0, -1]) == deer
    expected = torch.log_softmax(logits[-2].float(), dim=-1)[deer]
    torch.testing.assert_close(s[1, 1], expected, atol=1e-5, rtol=1e-5)
    # shared options broadcast; the same (image, option) pair scores the same wherever it sits
    shared = tiny.score_options(images, [PROMPT] * 3, ["cat", "dog", "deer"])
    torch.testing.assert_close(shared[1], torch.stack([s[1, 2], s[1, 0], s[1, 1]]), atol=1e-5, rtol=1e-5)


def test_score_options_multi_token_option_sums_token_logprobs(tiny, images):
    s = tiny.score_options(images[:1], [PROMPT], [["aquarium_fish", "cat dog"]])
    enc = tiny.processor(
        images=[to_pil_image(images[0])], text=[tiny.format_prompt(PROMPT) + " cat dog"], return_tensors="pt"
    )
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(**enc).logits[0].float(), dim=-1)
    ids = enc["input_ids"][0]
    expected = logp[-3, ids[-2]] + logp[-2, ids[-1]]
    torch.testing.assert_close(s[0, 1], expected, atol=1e-5, rtol=1e-5)


def test_matcher_exactly_one_hit_rule():
    opts = ["cat", "dog", "deer"]
    assert match_single_option("It is a Cat.", opts) == 0
    assert match_single_option("DOG!!", opts) == 1
    assert match_single_option("cat or dog", opts) is None  # two hits
    assert match_single_option("a horse", opts) is None  # zero hits
    assert match_single_option("", opts) is None


def test_matcher_case_underscore_and_punctuation():
    opts = ["aquarium_fish", "lawn_mower", "bee"]
    assert match_single_option("An aquarium-fish, clearly.", opts) == 0
    assert match_single_option("Lawn Mower", opts) == 1
    # options are normalised like answers by default; the raw-option variant cannot match "t-shirt"
    assert match_single_option("a T-shirt", ["t-shirt", "coat"]) == 0
    assert match_single_option("a T-shirt", ["t-shirt", "coat"], strip_option_non_letters=False) is None
    # non-normalised, case-sensitive raw test (MiniGPT-4-style)
    assert match_single_option("It is a Cat", ["cat", "dog"], normalize=False, case_sensitive=True) is None
    assert match_single_option("It is a cat", ["cat", "dog"], normalize=False, case_sensitive=True) == 0
    assert match_single_option("the aquarium fish", ["aquarium_fish"], normalize=False) is None
    # options that normalise to nothing never match
    assert match_single_option("42 cats", ["42", "cat"]) == 1


def test_matcher_substring_vs_word_mode():
    opts = ["cat", "caterpillar"]
    assert match_single_option("a caterpillar", opts) is None
    assert match_single_option("a caterpillar", opts, mode="word") == 1
    assert match_single_option("the cat sat", opts, mode="word") == 0
    assert match_single_option("cats", ["cat"], mode="word") is None
    with pytest.raises(ValueError, match="mode"):
        match_single_option("cat", opts, mode="regex")
    with pytest.raises(TypeError):
        match_single_option("cat", "cat")


def test_scripted_model_answers_and_scores():
    m = ScriptedModel(lambda im, p: "dog" if "dog" in p else "?")
    assert isinstance(m, MultimodalLM)
    assert m.generate([None, None], ["dog or cat", "x"]) == ["dog", "?"]
    s = m.score_options([None], ["dog or cat"], ["cat", "dog"])
    assert s.tolist() == [[-1.0, 0.0]]
    d = ScriptedModel({"a": "cat"}, default="none")
    assert d.generate([None, None], ["a", "b"]) == ["cat", "none"]
    assert [c[1] for c in d.calls] == ["a", "b"]
    sc = ScriptedModel("x", scorer=lambda im, p, o: float(len(o)))
    assert sc.score_options([None], ["p"], [["ab", "abcd"]]).tolist() == [[2.0, 4.0]]


def test_mismatched_images_and_prompts_raise(tiny, images):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        tiny.generate(images[:2], [PROMPT])
    with pytest.raises(ValueError, match="images but"):
        tiny.score_options(images[:1], [PROMPT, PROMPT], ["cat"])
    with pytest.raises(ValueError, match="3 option lists for 1"):
        tiny.score_options(images[:1], [PROMPT], [["cat"], ["dog"], ["deer"]])
    with pytest.raises(ValueError, match="same number of options"):
        tiny.score_options(images[:2], [PROMPT] * 2, [["cat"], ["dog", "deer"]])
    with pytest.raises(TypeError):
        tiny.generate(images[:1], PROMPT)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ScriptedModel("a").generate([None], ["p"], max_new_tokens=0)
    assert tiny.generate([], []) == []


def test_bad_images_raise():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_pil_image(torch.full((3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        to_pil_image(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="C, H, W"):
        to_pil_image(torch.zeros(4, 4))
    assert to_pil_image(np.zeros((4, 5, 3), dtype=np.uint8)).size == (5, 4)
    assert to_pil_image(torch.zeros(1, 4, 4)).mode == "RGB"


def test_missing_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="not in the local HF cache"):
        HFImageTextModel("papers-shared-tests/no-such-mllm-xyz", local_files_only=True)
    with pytest.raises(DatasetNotFoundError, match="Model folder"):
        HFImageTextModel("./no/such/folder")
    with pytest.raises(ValueError, match="processor"):
        HFImageTextModel(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="greedy"):
        HFImageTextModel("unused", generation_kwargs={"do_sample": True})


def test_local_folder_round_trip(tiny, images, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = HFImageTextModel(tmp_path, local_files_only=True)
    assert loaded.generate(images[:2], [PROMPT] * 2, max_new_tokens=5) == tiny.generate(
        images[:2], [PROMPT] * 2, max_new_tokens=5
    )


def test_word_level_tokenizer_vocabulary():
    words = vocabulary_from_texts(["Cat, dog or deer?"])
    assert words == [",", "?", "cat", "deer", "dog", "or"]
    tok = word_level_tokenizer(words)
    ids = tok("<image>\nCat or emu?", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<image>", "cat", "or", "<unk>", "?"]
    assert tok.decode(tok("cat, dog?", add_special_tokens=False).input_ids) == "cat, dog?"
