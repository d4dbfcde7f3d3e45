"""Toy data, tokenisation parity with trl, evaluation helpers and offline errors."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from ofs_dpo.data import make_toy_domain, toy_domains, toy_token_ids
from ofs_dpo.evaluation import (
    RewardModelJudge,
    continual_metrics,
    generate_completions,
    implicit_reward_accuracy,
    pair_margins,
    tokenize_preferences,
)
from papers_shared.data import DatasetNotFoundError


def _indices(text: str) -> list[int]:
    return [int(t[1:]) for t in text.split()]


def test_toy_domains_encode_the_stated_preferences():
    a = make_toy_domain("even", 50, vocab_size=40, seed=3)
    for row in a:
        c, r = _indices(row["chosen"]), _indices(row["rejected"])
        assert len(c) == len(r) == 6 and len(_indices(row["prompt"])) == 4
        assert all(x % 2 == 0 for x in c) and all(y == x + 1 for x, y in zip(c, r))
        assert row["chosen"].startswith(" ")
    b = make_toy_domain("low", 50, vocab_size=40, seed=3)
    for row in b:
        c, r = _indices(row["chosen"]), _indices(row["rejected"])
        assert all(x < 20 for x in c) and all(y == x + 20 for x, y in zip(c, r))
    d1, d2 = toy_domains(n_train=8, n_eval=4, seed=1), toy_domains(n_train=8, n_eval=4, seed=1)
    assert d1["toy_a"]["train"]["prompt"] == d2["toy_a"]["train"]["prompt"]
    assert len(d1["toy_b"]["test"]) == 4
    with pytest.raises(ValueError, match="kind"):
        make_toy_domain("odd", 4)
    with pytest.raises(ValueError, match="unknown toy domain"):
        toy_domains(names=("toy_c",))


def test_tokenizer_round_trip(tok):
    ids = tok("t0 t3 t39" + tok.eos_token)["input_ids"]
    assert ids == [toy_token_ids(40)[0], toy_token_ids(40)[3], toy_token_ids(40)[39], tok.eos_token_id]
    assert tok.unk_token_id not in ids


def test_tokenisation_matches_trl(make_trainer, tok, domains):
    tr = make_trainer()
    ours = tokenize_preferences(domains["toy_a"]["train"], tok)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[key] == tr.train_dataset[key]
    with pytest.raises(ValueError, match="lacks the columns"):
        tokenize_preferences(Dataset.from_dict({"prompt": ["t1"], "chosen": [" t2"]}), tok)


def test_pair_margins_match_the_trainer_margins(make_trainer, h, tok, domains):
    """Evaluation (full logits) and training (trl's fused LM head) give the same margins."""
    tr = make_trainer(per_device_train_batch_size=len(domains["toy_a"]["train"]))
    h.randomize_adapter(tr.model, "default", seed=7)
    h.randomize_adapter(tr.model, "slow", seed=8)
    tr.model.train()
    with torch.no_grad():
        _, fw = tr.compute_objectives(tr.model, h.first_batch(tr))
    ev = pair_margins(tr.model, domains["toy_a"]["train"], tok, ["default", "slow"], beta=tr.beta)
    assert torch.allclose(ev["default"], fw["margins"]["fast"].cpu(), atol=1e-5)
    assert torch.allclose(ev["slow"], fw["margins"]["slow"].cpu(), atol=1e-5)
    assert tr.model.active_adapter == "default" and tr.model.training
    assert all(p.requires_grad for n, p in tr.model.named_parameters() if ".slow." in n)
    acc = implicit_reward_accuracy(tr.model, domains["toy_a"]["train"], tok, "slow", beta=tr.beta)
    assert acc == pytest.approx(float((ev["slow"] > 0).float().mean()))


def test_accuracy_at_initialisation_is_zero(make_trainer, tok, domains):
    tr = make_trainer()
    # B = 0: policy == reference, every margin is exactly 0 and no pair is ranked correctly.
    assert implicit_reward_accuracy(tr.model, domains["toy_a"]["test"], tok) == 0.0


def test_generation_and_judge(make_trainer, tok):
    tr = make_trainer()
    out = generate_completions(tr.model, tok, ["t1 t2 t3 t4", "t5 t6"], max_new_tokens=3, return_ids=True)
    assert len(out) == 2 and all(len(x) <= 3 for x in out)
    texts = generate_completions(tr.model, tok, ["t1 t2"], max_new_tokens=3, do_sample=True, seed=1)
    assert isinstance(texts[0], str)
    judge = RewardModelJudge(lambda prompts, comps: [float(len(c)) for c in comps])
    assert judge.judge(["p", "q"], [("aa", "a"), ("a", "aaa")]) == [0, 1]
    with pytest.raises(ValueError, match="empty"):
        generate_completions(tr.model, tok, [])


def test_continual_metrics_hand_computed():
    m = continual_metrics([[0.9, None], [0.7, 0.8]])
    assert m["final_avg"] == pytest.approx(0.75)
    assert m["forgetting"] == pytest.approx(0.2)
    three = continual_metrics([[1.0, None, None], [0.6, 0.9, None], [0.8, 0.5, 0.7]])
    assert three["forgetting"] == pytest.approx(((1.0 - 0.8) + (0.9 - 0.5)) / 2)
    with pytest.raises(ValueError, match="square"):
        continual_metrics([[1.0, 2.0]])
    with pytest.raises(ValueError, match="last row"):
        continual_metrics([[1.0, None], [0.5, None]])
    assert math.isnan(continual_metrics([[float("nan"), None], [0.5, 0.6]])["forgetting"])


def test_hub_loaders_fail_clearly_offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from ofs_dpo.data import load_preference_domain

    with pytest.raises(DatasetNotFoundError, match="trl-lib/hh-rlhf-helpful-base"):
        load_preference_domain("hh", "train", n=4)
    with pytest.raises(ValueError, match="unknown task"):
        load_preference_domain("webgpt")
    with pytest.raises(ValueError, match="build_sentiment_pairs"):
        load_preference_domain("imdb")
    from ofs_dpo.evaluation import SequenceClassifierReward

    with pytest.raises(DatasetNotFoundError, match="not-a-real/reward-model"):
        SequenceClassifierReward("not-a-real/reward-model")
