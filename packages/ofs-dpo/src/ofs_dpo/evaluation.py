"""Evaluation shared by every method (the paper's in-domain and cross-domain evaluation, arXiv 2406.05534 Sec. 4; metrics ours): implicit-reward accuracy, gradient weights, sampling,
reward-model win rate and the continual-learning score matrix.

All functions take a ``peft.PeftModel`` and name the adapter to evaluate; the reference is the base model with
adapters disabled (or a named reference adapter), exactly as in training. Tokenisation reproduces trl's
``DPOTrainer`` preprocessing (EOS appended to non-conversational completions, completion = tokens after the
common prefix of prompt and prompt+completion) and batches go through trl's ``DataCollatorForPreference``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from datasets import Dataset

from ofs_dpo.losses import dpo_margins, sequence_logps
from papers_shared.metrics import forgetting, preference_accuracy, win_rate

__all__ = [
    "PairwiseJudge",
    "RewardModelJudge",
    "SequenceClassifierReward",
    "continual_metrics",
    "generate_completions",
    "gradient_weights",
    "implicit_reward_accuracy",
    "pair_margins",
    "sample_reward",
    "tokenize_preferences",
    "win_rate_vs_reference",
]


def _tokenize_example(example: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    from trl.data_utils import common_prefix_length, is_conversational

    if is_conversational(example):
        prompt = tokenizer.apply_chat_template(
            example["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        full_c = tokenizer.apply_chat_template(
            example["prompt"] + example["chosen"], tokenize=True, return_dict=True
        )["input_ids"]
        full_r = tokenizer.apply_chat_template(
            example["prompt"] + example["rejected"], tokenize=True, return_dict=True
        )["input_ids"]
    else:
        eos = tokenizer.eos_token or ""
        chosen = example["chosen"] if example["chosen"].endswith(eos) else example["chosen"] + eos
        rejected = example["rejected"] if example["rejected"].endswith(eos) else example["rejected"] + eos
        prompt = tokenizer(text=example["prompt"])["input_ids"]
        full_c = tokenizer(text=example["prompt"] + chosen)["input_ids"]
        full_r = tokenizer(text=example["prompt"] + rejected)["input_ids"]
    n = min(common_prefix_length(prompt, full_c), common_prefix_length(prompt, full_r))
    return {"prompt_ids": prompt[:n], "chosen_ids": full_c[n:], "rejected_ids": full_r[n:]}


def tokenize_preferences(dataset: Dataset, tokenizer: Any, max_length: int | None = None) -> Dataset:
    """``prompt/chosen/rejected`` → ``prompt_ids/chosen_ids/rejected_ids`` as trl's ``DPOTrainer`` does."""
    missing = {"prompt", "chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"preference dataset lacks the columns {sorted(missing)}; has {dataset.column_names}"
        )
    if len(dataset) == 0:
        raise ValueError("preference dataset is empty")
    out = dataset.map(
        _tokenize_example, fn_kwargs={"tokenizer": tokenizer}, remove_columns=dataset.column_names
    )
    if max_length is not None:
        out = out.filter(lambda ex: len(ex["prompt_ids"]) < max_length)
    return out


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _adapter(model: Any, name: str | None):
    """Run under adapter ``name`` (None: adapters disabled); restores the previous state and grad flags."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    previous = model.active_adapter
    try:
        if name is None:
            with model.disable_adapter():
                yield
        else:
            if name not in model.peft_config:
                raise ValueError(f"unknown adapter {name!r}; have {sorted(model.peft_config)}")
            model.set_adapter(name)
            yield
    finally:
        if model.active_adapter != previous:
            model.set_adapter(previous)
        params = dict(model.named_parameters())
        for n, p in params.items():
            p.requires_grad_(n in trainable)


@torch.no_grad()
def pair_margins(
    model: Any,
    dataset: Dataset,
    tokenizer: Any,
    adapters: Sequence[str],
    beta: float = 0.1,
    ref_adapter: str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Implicit-reward margins ``h`` (DPO's implicit reward, Rafailov et al. 2023 Eq. 5) of every adapter in ``adapters`` on every pair, ``{name: (N,)}``.

    The reference log-probs (adapters disabled, or ``ref_adapter``) are computed once and shared.
    """
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    if not adapters:
        raise ValueError("adapters is empty")
    tok = (
        dataset
        if "prompt_ids" in dataset.column_names
        else tokenize_preferences(dataset, tokenizer, max_length)
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = DataCollatorForPreference(pad_token_id=pad, max_length=max_length)
    device = _device(model)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {a: [] for a in adapters}
    try:
        for start in range(0, len(tok), batch_size):
            rows = tok.select(range(start, min(start + batch_size, len(tok))))
            batch = collate([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows])
            ids = batch["input_ids"].to(device)
            att = batch["attention_mask"].to(device)
            comp = batch["completion_mask"].to(device)
            with _adapter(model, ref_adapter):
                ref = sequence_logps(model(input_ids=ids, attention_mask=att).logits, ids, comp)
            for a in adapters:
                with _adapter(model, a):
                    pol = sequence_logps(model(input_ids=ids, attention_mask=att).logits, ids, comp)
                out[a].append(dpo_margins(pol, ref, beta).cpu())
    finally:
        model.train(was_training)
    return {a: torch.cat(v) for a, v in out.items()}


def implicit_reward_accuracy(
    model: Any,
    dataset: Dataset,
    tokenizer: Any,
    adapter: str = "default",
    beta: float = 0.1,
    ref_adapter: str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
) -> float:
    """Fraction of held-out pairs whose implicit reward ranks ``chosen`` above ``rejected`` (reward accuracy)."""
    h = pair_margins(model, dataset, tokenizer, [adapter], beta, ref_adapter, batch_size, max_length)[adapter]
    return preference_accuracy(h, torch.zeros_like(h))


def gradient_weights(
    model: Any,
    dataset: Dataset,
    tokenizer: Any,
    leader: str,
    chaser: str | None = None,
    beta: float = 0.1,
    batch_size: int = 32,
) -> dict[str, float]:
    """Mean gradient weights on a probe set (the paper's Proposition 3.3.1: DPO's gradient vanishes as margins grow): ``σ(−h_L)`` of DPO and ``σ(−(h_L − h_C))``."""
    names = [leader] if chaser is None else [leader, chaser]
    h = pair_margins(model, dataset, tokenizer, names, beta, batch_size=batch_size)
    out = {"grad_weight_dpo": float(torch.sigmoid(-h[leader]).mean())}
    if chaser is not None:
        out["grad_weight_chase"] = float(torch.sigmoid(-(h[leader] - h[chaser])).mean())
        out["margin_gap"] = float((h[leader] - h[chaser]).mean())
    return out


@torch.no_grad()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    seed: int = 0,
    adapter: str | None = None,
    return_ids: bool = False,
    **gen_kwargs: Any,
) -> list[str] | list[list[int]]:
    """Greedy (default) or sampled completions for ``prompts`` (left padding); decoded text or token ids."""
    if not prompts:
        raise ValueError("prompts is empty")
    device = _device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    results: list = []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ctx = _adapter(model, adapter) if adapter is not None else contextlib.nullcontext()
    try:
        with ctx:
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                if do_sample:
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                seqs = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    pad_token_id=tokenizer.pad_token_id,
                    **gen_kwargs,
                )
                new = seqs[:, enc["input_ids"].shape[1] :].cpu()
                if return_ids:
                    results.extend(row.tolist() for row in new)
                else:
                    results.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return results


class SequenceClassifierReward:
    """Reward function from a HF sequence classifier (reward model or sentiment classifier).

    ``reward(prompts, completions) -> list[float]``. ``pair_input=True`` feeds ``(prompt, completion)`` as a
    text pair (OpenAssistant reward models); otherwise ``prompt + completion``. With several labels the score is
    the logit of ``label_index`` minus the mean of the others (e.g. POSITIVE for ``lvwerra/distilbert-imdb``).
    """

    def __init__(
        self,
        model_id: str,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        pair_input: bool = True,
        label_index: int = -1,
        max_length: int = 512,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from papers_shared.data.hf import require_hub_model

        path = model_id if _is_local_dir(model_id) else require_hub_model(model_id)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.pair_input = pair_input
        self.label_index = label_index
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions differ in length")
        scores: list[float] = []
        for s in range(0, len(prompts), self.batch_size):
            p = [_as_text(x) for x in prompts[s : s + self.batch_size]]
            c = [_as_text(x) for x in completions[s : s + self.batch_size]]
            if self.pair_input:
                enc = self.tokenizer(
                    p, c, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
                )
            else:
                texts = [a + b for a, b in zip(p, c)]
                enc = self.tokenizer(
                    texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
                )
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            if logits.size(-1) == 1:
                scores.extend(logits[:, 0].tolist())
            else:
                idx = self.label_index % logits.size(-1)
                others = torch.cat([logits[:, :idx], logits[:, idx + 1 :]], dim=1).mean(dim=1)
                scores.extend((logits[:, idx] - others).tolist())
        return scores


def _is_local_dir(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


def _as_text(x: Any) -> str:
    """Conversational turns → plain text for reward models; strings unchanged."""
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in x)
    raise TypeError(f"expected text or a list of messages, got {type(x).__name__}")


class PairwiseJudge(Protocol):
    """``judge(prompts, completion_pairs) -> list[int]``: index (0 or 1) of the better completion per prompt."""

    def judge(self, prompts: Sequence[str], completion_pairs: Sequence[tuple[str, str]]) -> list[int]: ...


class RewardModelJudge:
    """Pairwise judge from any reward function (ours: win rate under a reward model)."""

    def __init__(self, reward_fn: Callable[[Sequence[str], Sequence[str]], list[float]]) -> None:
        self.reward_fn = reward_fn

    def judge(self, prompts: Sequence[str], completion_pairs: Sequence[tuple[str, str]]) -> list[int]:
        a = self.reward_fn(prompts, [x[0] for x in completion_pairs])
        b = self.reward_fn(prompts, [x[1] for x in completion_pairs])
        return [0 if x >= y else 1 for x, y in zip(a, b)]


def sample_reward(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward_fn: Callable[[Sequence[str], Sequence[str]], list[float]],
    adapter: str | None = None,
    **gen_kwargs: Any,
) -> float:
    """Mean reward of the policy's completions (e.g. sentiment score on IMDb prompts)."""
    completions = generate_completions(model, tokenizer, prompts, adapter=adapter, **gen_kwargs)
    return float(np.mean(reward_fn(prompts, completions)))


def win_rate_vs_reference(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    references: Sequence[Any],
    reward_fn: Callable[[Sequence[str], Sequence[str]], list[float]],
    adapter: str | None = None,
    **gen_kwargs: Any,
) -> float:
    """Win rate of the policy's completions over ``references`` (dataset ``chosen``) under ``reward_fn``."""
    if len(prompts) != len(references):
        raise ValueError("prompts and references differ in length")
    texts = [_prompt_text(tokenizer, p) for p in prompts]
    completions = generate_completions(model, tokenizer, texts, adapter=adapter, **gen_kwargs)
    ours = reward_fn(prompts, completions)
    theirs = reward_fn(prompts, [_as_text(r) for r in references])
    return win_rate(torch.tensor(ours), torch.tensor(theirs))


def _prompt_text(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def continual_metrics(matrix: Sequence[Sequence[float | None]] | np.ndarray) -> dict[str, float]:
    """Final average ``(1/K)Σ_j R[K,j]`` and forgetting of the score matrix ``R[k, j]`` (ours: score matrix metrics as in continual-learning papers)."""
    arr = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"score matrix must be square and non-empty, got shape {arr.shape}")
    last = arr[-1]
    if not np.all(np.isfinite(last)):
        raise ValueError("the last row of the score matrix must be complete")
    complete = all(np.all(np.isfinite(arr[k, : k + 1])) for k in range(arr.shape[0]))
    return {
        "final_avg": float(last.mean()),
        "forgetting": float(forgetting(arr)) if complete else math.nan,
    }
