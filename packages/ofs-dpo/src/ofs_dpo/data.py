"""Preference data: offline toy domains (ours), tiny models, and the hub tasks (the DPO paper's task family; choice ours).

Every dataset is a ``datasets.Dataset`` with the columns ``prompt``, ``chosen``, ``rejected`` that trl expects.
Hub loaders go through :mod:`papers_shared.data.hf` and raise ``DatasetNotFoundError`` with instructions when
the data are not cached and the hub cannot be reached.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

__all__ = [
    "HUB_TASKS",
    "HubTask",
    "build_sentiment_pairs",
    "imdb_prompts",
    "load_preference_domain",
    "make_toy_domain",
    "tiny_gpt2",
    "toy_domains",
    "toy_token_ids",
    "toy_tokenizer",
]

TOY_SPECIALS = ("<pad>", "<eos>", "<unk>")
TOY_KINDS = {"toy_a": "even", "toy_b": "low"}


def toy_tokenizer(vocab_size: int = 40):
    """Word-level tokenizer built in memory: ``<pad>``, ``<eos>``, ``<unk>``, then ``t0 … t{V-1}``.

    Content token ``tk`` has id ``k + 3``; "even"/"low" in the toy domains refer to the content index ``k``.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 4 or vocab_size % 2:
        raise ValueError(f"toy vocab_size must be an even number >= 4, got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(TOY_SPECIALS)}
    for k in range(vocab_size):
        vocab[f"t{k}"] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.padding_side = "left"
    return fast


def toy_token_ids(vocab_size: int) -> list[int]:
    """Token ids of the content tokens ``t0 … t{V-1}`` of :func:`toy_tokenizer`."""
    return [k + len(TOY_SPECIALS) for k in range(vocab_size)]


def make_toy_domain(
    kind: str,
    n_pairs: int,
    vocab_size: int = 40,
    prompt_len: int = 4,
    completion_len: int = 6,
    seed: int = 0,
) -> Dataset:
    """One toy preference domain (ours).

    - ``"even"`` (domain A): chosen tokens ``t(2r)``, rejected ``t(2r+1)`` (same ``r`` per position).
    - ``"low"`` (domain B): chosen ``t(r)``, rejected ``t(r + V/2)`` (prefers indices < V/2).

    Prompts are ``prompt_len`` uniform tokens; completions start with a space so that trl's
    ``prompt + completion`` concatenation tokenises cleanly.
    """
    if kind not in ("even", "low"):
        raise ValueError(f"toy domain kind must be 'even' or 'low', got {kind!r}")
    if n_pairs < 1 or prompt_len < 1 or completion_len < 1:
        raise ValueError("n_pairs, prompt_len and completion_len must be >= 1")
    rng = random.Random(seed)
    half = vocab_size // 2
    prompts, chosen, rejected = [], [], []
    for _ in range(n_pairs):
        prompts.append(" ".join(f"t{rng.randrange(vocab_size)}" for _ in range(prompt_len)))
        rs = [rng.randrange(half) for _ in range(completion_len)]
        if kind == "even":
            c, r = [2 * x for x in rs], [2 * x + 1 for x in rs]
        else:
            c, r = rs, [x + half for x in rs]
        chosen.append(" " + " ".join(f"t{x}" for x in c))
        rejected.append(" " + " ".join(f"t{x}" for x in r))
    return Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})


def toy_domains(
    names: list[str] | tuple[str, ...] = ("toy_a", "toy_b"),
    n_train: int = 1024,
    n_eval: int = 256,
    vocab_size: int = 40,
    prompt_len: int = 4,
    completion_len: int = 6,
    seed: int = 0,
) -> dict[str, dict[str, Dataset]]:
    """``{"toy_a": {"train", "test"}, "toy_b": {...}}``: disjoint train/held-out pairs per domain."""
    out = {}
    for i, name in enumerate(names):
        if name not in TOY_KINDS:
            raise ValueError(f"unknown toy domain {name!r}; known: {sorted(TOY_KINDS)}")
        full = make_toy_domain(
            TOY_KINDS[name], n_train + n_eval, vocab_size, prompt_len, completion_len, seed=seed * 1000 + i
        )
        out[name] = {
            "train": full.select(range(n_train)),
            "test": full.select(range(n_train, n_train + n_eval)),
        }
    return out


def tiny_gpt2(
    vocab_size: int,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 64,
    seed: int = 0,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
):
    """Randomly initialised ``GPT2LMHeadModel`` from a ``GPT2Config`` (no download), seeded."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    model.generation_config.pad_token_id = pad_token_id
    return model


# ---------------------------------------------------------------------------------------------------------------
# Hub tasks (ours: score matrix metrics as in continual-learning papers)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubTask:
    """A preference task on the HF hub: dataset id and splits (pairs already in prompt/chosen/rejected form)."""

    dataset: str
    train_split: str
    eval_split: str
    description: str


HUB_TASKS: dict[str, HubTask] = {
    "tldr": HubTask(
        "trl-lib/tldr-preference", "train", "validation", "summarization (openai/summarize_from_feedback)"
    ),
    "hh": HubTask(
        "trl-lib/hh-rlhf-helpful-base", "train", "test", "single-turn dialogue (Anthropic/hh-rlhf)"
    ),
    "imdb": HubTask(
        "stanfordnlp/imdb", "train", "test", "controlled sentiment generation (pairs built by sampling)"
    ),
}


def load_preference_domain(
    name: str, split: str = "train", n: int | None = None, cache_dir: str | None = None, seed: int = 0
) -> Dataset:
    """Load a hub preference task as ``prompt/chosen/rejected`` (``"tldr"``, ``"hh"``); first ``n`` rows.

    ``"imdb"`` has no pairs on the hub: use :func:`imdb_prompts` and :func:`build_sentiment_pairs`.
    Raises ``DatasetNotFoundError`` offline.
    """
    from papers_shared.data.hf import load_hf_dataset

    if name not in HUB_TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(HUB_TASKS)} (toy: {sorted(TOY_KINDS)})")
    if name == "imdb":
        raise ValueError("imdb pairs are generated: use imdb_prompts() then build_sentiment_pairs()")
    task = HUB_TASKS[name]
    split_name = {"train": task.train_split, "eval": task.eval_split, "test": task.eval_split}.get(
        split, split
    )
    ds = load_hf_dataset(task.dataset, split=split_name, cache_dir=cache_dir)
    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{task.dataset} lacks the preference columns {sorted(missing)}")
    ds = ds.select_columns(["prompt", "chosen", "rejected"])
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    return ds


def imdb_prompts(
    split: str = "train", n: int | None = None, seed: int = 0, cache_dir: str | None = None
) -> Dataset:
    """IMDb prompts = the first 2–8 words of reviews (the DPO paper's sentiment setting); column ``prompt``."""
    from papers_shared.data.hf import load_hf_dataset

    ds = load_hf_dataset(HUB_TASKS["imdb"].dataset, split=split, cache_dir=cache_dir)
    rng = random.Random(seed)
    count = len(ds) if n is None else min(n, len(ds))
    prompts = []
    for text in ds.select(range(count))["text"]:
        words = text.replace("<br />", " ").split()
        prompts.append(" ".join(words[: rng.randint(2, 8)]))
    return Dataset.from_dict({"prompt": prompts})


def build_sentiment_pairs(
    policy: Any,
    tokenizer: Any,
    prompts: Dataset,
    reward_fn: Any,
    pairs_per_prompt: int = 1,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
) -> Dataset:
    """Sample two completions per prompt from ``policy`` and label them with ``reward_fn`` (higher = chosen).

    ``reward_fn(prompts, completions) -> list[float]`` (e.g. :class:`ofs_dpo.evaluation.SequenceClassifierReward`
    on ``lvwerra/distilbert-imdb``). Ties are dropped.
    """
    from ofs_dpo.evaluation import generate_completions

    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    texts = list(prompts["prompt"]) * pairs_per_prompt
    a = generate_completions(policy, tokenizer, texts, max_new_tokens, batch_size, do_sample=True, seed=seed)
    b = generate_completions(
        policy, tokenizer, texts, max_new_tokens, batch_size, do_sample=True, seed=seed + 1
    )
    ra, rb = reward_fn(texts, a), reward_fn(texts, b)
    for p, ca, cb, sa, sb in zip(texts, a, b, ra, rb):
        if sa == sb:
            continue
        rows["prompt"].append(p)
        rows["chosen"].append(ca if sa > sb else cb)
        rows["rejected"].append(cb if sa > sb else ca)
    return Dataset.from_dict(rows)
