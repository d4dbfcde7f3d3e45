"""WikiText-103 token streams for causal language modelling (the paper's language-modelling table).

Text comes from HF ``datasets`` (``Salesforce/wikitext``, ``wikitext-103-raw-v1``) through
``papers_shared.data.hf.load_hf_dataset`` (clear error offline), or from a local ``data_dir`` holding
either a ``save_to_disk`` copy or the raw files ``wiki.{train,valid,test}.raw``. Token ids are cached
as ``.pt`` files. Tokenizers: an HF tokenizer id (``"gpt2"``; must be in the local HF cache offline) or
``"byte"`` (UTF-8 bytes + an end-of-line id, no download).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from papers_shared.checkpoints import atomic_save
from papers_shared.data import DatasetNotFoundError
from smr_ssm.data.cache import load_cache

__all__ = ["ByteTokenizer", "LMWindows", "get_tokenizer", "load_lm_tokens", "perplexity"]

_RAW_NAMES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


class ByteTokenizer:
    """UTF-8 bytes (ids 0..255) plus ``eos_token_id = 256``; ``vocab_size = 257``."""

    vocab_size = 257
    eos_token_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


def get_tokenizer(name: str):
    """``"byte"`` or an HF tokenizer id / local folder (offline: from the local cache only)."""
    if name == "byte":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    path = Path(name)
    if not path.is_dir():
        from papers_shared.data.hf import require_hub_model

        path = require_hub_model(name)
    return AutoTokenizer.from_pretrained(str(path))


def _vocab_size(tok) -> int:
    return int(getattr(tok, "vocab_size", 0) or len(tok))


def _read_split(dataset: str, config: str | None, split: str, data_dir: str | None) -> list[str]:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        raw = root / _RAW_NAMES.get(split, f"wiki.{split}.raw")
        if raw.is_file():
            return raw.read_text(encoding="utf-8").splitlines(keepends=True)
        if (root / "dataset_dict.json").is_file() or (root / split / "dataset_info.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(root))
            return list(ds[split]["text"])
        raise DatasetNotFoundError(
            f"WikiText split {split!r}",
            raw,
            "Pass a folder with wiki.{train,valid,test}.raw (the WikiText-103 raw release) or a "
            "datasets.save_to_disk copy, or leave data_dir unset to read Salesforce/wikitext from the HF cache.",
        )
    from papers_shared.data.hf import load_hf_dataset

    ds = load_hf_dataset(dataset, config, split=split)
    return list(ds["text"])


def load_lm_tokens(
    dataset: str = "Salesforce/wikitext",
    dataset_config: str | None = "wikitext-103-raw-v1",
    tokenizer: str = "gpt2",
    splits: tuple[str, ...] = ("train", "validation", "test"),
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Token ids of each split as one 1-D ``LongTensor`` (lines concatenated), and the vocabulary size."""
    tok = get_tokenizer(tokenizer)
    out = {}
    for split in splits:
        cache = None
        if cache_dir is not None:
            tag = f"{dataset}-{dataset_config}-{tokenizer}-{split}".replace("/", "_")
            cache = Path(cache_dir).expanduser() / f"{tag}.pt"
            cached = load_cache(cache)
            if isinstance(cached, torch.Tensor) and cached.ndim == 1:
                out[split] = cached
                continue
        lines = _read_split(dataset, dataset_config, split, data_dir)
        ids: list[int] = []
        chunk = 2000
        for i in range(0, len(lines), chunk):
            text = "".join(lines[i : i + chunk])
            ids.extend(tok.encode(text))
        tensor = torch.tensor(ids, dtype=torch.long)
        if cache is not None:
            atomic_save(tensor, cache)
        out[split] = tensor
    return out, _vocab_size(tok)


class LMWindows:
    """Training windows of ``context`` tokens at random offsets, a pure function of the step (exact
    resume), and contiguous (or strided, sliding-window) evaluation windows."""

    def __init__(self, tokens: torch.Tensor, context: int, seed: int = 0) -> None:
        if tokens.ndim != 1:
            raise ValueError("tokens must be a 1-D tensor of ids")
        if tokens.numel() <= context:
            raise ValueError(f"need more than context={context} tokens, got {tokens.numel()}")
        self.tokens, self.context, self.seed = tokens, context, seed

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        """Training windows of ``step``: the global batch of ``batch_size`` random windows, of which this
        process takes rows ``rank::world`` (the share a ``DistributedSampler`` would give it)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, self.tokens.numel() - self.context + 1, (batch_size,), generator=g)
        ids = torch.stack([self.tokens[s : s + self.context] for s in starts[rank::world].tolist()])
        return {"input_ids": ids, "labels": ids}

    def eval_batches(
        self, batch_size: int, stride: int | None = None, max_batches: int | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Windows covering the stream once. With ``stride < context`` each window scores only its last
        ``stride`` tokens (labels ``-100`` elsewhere), giving every token ``context - stride`` of history."""
        C, N = self.context, self.tokens.numel()
        stride = stride or C
        starts = list(range(0, max(1, N - C + 1), stride))
        batch_ids, batch_labels, n = [], [], 0
        for i, s in enumerate(starts):
            ids = self.tokens[s : s + C]
            labels = ids.clone()
            if i > 0 and stride < C:
                labels[: C - stride] = -100
            batch_ids.append(ids)
            batch_labels.append(labels)
            if len(batch_ids) == batch_size or i == len(starts) - 1:
                yield {"input_ids": torch.stack(batch_ids), "labels": torch.stack(batch_labels)}
                batch_ids, batch_labels = [], []
                n += 1
                if max_batches is not None and n >= max_batches:
                    return


@torch.no_grad()
def perplexity(model, batches, device) -> dict[str, float]:
    """Token-weighted mean next-token NLL and its exponential over ``batches``. Under several processes
    each scores every ``world``-th batch and the sums are gathered (every process returns the total)."""
    from papers_shared import distributed as dist

    rank, world = dist.rank(), dist.world_size()
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        if i % world != rank:
            continue
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        logits = model(input_ids=ids).logits[:, :-1]
        target = labels[:, 1:]
        valid = target != -100
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += nll.item()
        count += int(valid.sum())
    parts = dist.gather_objects((total, count))
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    loss = total / max(count, 1)
    return {"nll": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}
