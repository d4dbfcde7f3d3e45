"""Large model of the CIM: slow deliberation over the fast path's candidates and the writer of the textual
scenario memory (paper: an MLLM; prompt, candidates and answer parsing from the same authors' ICL code,
``utils/cor_with_slow.py:InferenceWithSlowModel`` ``formulate_query``/``classification``, repository
Biqing-Qi/Interactive-continual-Learning-Fast-and-Slow-Thinking, commit 17ab1c68).

Any :class:`papers_shared.mllm.MultimodalLM` works: a transformers checkpoint through
:class:`~papers_shared.mllm.HFImageTextModel`, the tiny random LLaVA
(:func:`papers_shared.mllm.build_tiny_llava`) or a :class:`~papers_shared.mllm.ScriptedModel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from papers_shared.mllm import MultimodalLM, match_single_option
from sr_cis.text_memory import DESCRIBE_TEMPLATE, choose_prompt

__all__ = ["SlowPath", "build_large_model", "parse_choice"]


def parse_choice(answer: str, candidates: Sequence[int], names: Mapping[int, str], mode: str = "substring"):
    """ICL answer mapping: the only candidate whose name occurs in the normalised answer, else ``None``."""
    idx = match_single_option(answer, [names[c] for c in candidates], mode=mode)
    return None if idx is None else int(candidates[idx])


class SlowPath:
    """``decide`` re-labels routed samples; ``describe`` writes descriptions of training images."""

    def __init__(
        self,
        model: MultimodalLM,
        names: Mapping[int, str],
        answer_mode: str = "generate",
        max_new_tokens: int = 128,
        match_mode: str = "substring",
    ) -> None:
        if answer_mode not in ("generate", "loglik"):
            raise ValueError(f"answer_mode must be 'generate' or 'loglik', got {answer_mode!r}")
        need = "generate" if answer_mode == "generate" else "score_options"
        if not hasattr(model, need):
            raise TypeError(f"answer_mode={answer_mode!r} needs a large model with {need}(...)")
        self.model = model
        self.names = dict(names)
        self.answer_mode = answer_mode
        self.max_new_tokens = max_new_tokens
        self.match_mode = match_mode

    def _names(self, cands: Sequence[int]) -> list[str]:
        missing = [c for c in cands if c not in self.names]
        if missing:
            raise KeyError(f"no class name for class ids {missing}")
        return [self.names[c] for c in cands]

    def decide(
        self, images: torch.Tensor, candidates: torch.Tensor, fallback: torch.Tensor
    ) -> tuple[torch.Tensor, list[str]]:
        """Final class per image: the MLLM's choice among ``candidates`` (``[B, k]``, ``-1`` = empty slot),
        ``fallback`` (the fast prediction) when the answer names zero or several candidates."""
        if images.shape[0] != candidates.shape[0] or candidates.shape[0] != fallback.shape[0]:
            raise ValueError("images, candidates and fallback need the same batch size")
        cand_lists = [[int(c) for c in row if int(c) >= 0] for row in candidates]
        prompts = [choose_prompt(self._names(cs)) for cs in cand_lists]
        imgs = list(images.detach().cpu())
        out = fallback.clone()
        if self.answer_mode == "loglik":
            k = min(len(c) for c in cand_lists)
            cand_lists = [c[:k] for c in cand_lists]
            scores = self.model.score_options(imgs, prompts, [self._names(c) for c in cand_lists])
            best = scores.argmax(1)
            for i, cs in enumerate(cand_lists):
                out[i] = cs[int(best[i])]
            return out, ["" for _ in cand_lists]
        answers = self.model.generate(imgs, prompts, max_new_tokens=self.max_new_tokens)
        for i, (a, cs) in enumerate(zip(answers, cand_lists)):
            c = parse_choice(a, cs, self.names, self.match_mode)
            if c is not None:
                out[i] = c
        return out, answers

    def describe(self, images: torch.Tensor, class_id: int, max_new_tokens: int = 60) -> list[str]:
        """One description per image with ``DESCRIBE_TEMPLATE`` (ours)."""
        if not hasattr(self.model, "generate"):
            raise TypeError("this large model cannot write descriptions (no generate); use class_name_only")
        name = self._names([class_id])[0]
        prompts = [DESCRIBE_TEMPLATE.format(name=name)] * images.shape[0]
        return self.model.generate(list(images.detach().cpu()), prompts, max_new_tokens=max_new_tokens)

    def zero_shot(self, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """Baseline ``MLLMZeroShot``: log-likelihood choice over all ``classes`` (never abstains)."""
        names = self._names(list(classes))
        prompts = [choose_prompt(names)] * images.shape[0]
        scores = self.model.score_options(list(images.detach().cpu()), prompts, names)
        return torch.tensor(list(classes))[scores.argmax(1)]


def build_large_model(model_id: str, **kwargs) -> MultimodalLM:
    """A transformers image-text-to-text model (hub id or folder); clear error when absent offline."""
    from papers_shared.mllm import HFImageTextModel

    return HFImageTextModel(model_id, **kwargs)
