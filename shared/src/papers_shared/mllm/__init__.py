"""One interface to multimodal LLMs, used by the fast/slow continual learners (icl-vmf, sr-cis).

* :class:`MultimodalLM` (Protocol): ``generate(images, prompts, max_new_tokens)`` (greedy) and
  ``score_options(images, prompts, options) -> [B, K]`` (summed option log-probabilities).
* :class:`HFImageTextModel`: transformers ``AutoModelForImageTextToText`` + ``AutoProcessor`` (hub id,
  local folder or built objects; chat template when available; clear error for an uncached id offline).
* :func:`build_tiny_llava`: a random tiny LLaVA with an in-memory word-level tokenizer and processor.
* :class:`ScriptedModel`: deterministic answers for tests.
* :func:`match_single_option`: the "exactly one candidate occurs in the answer" parser.

transformers and tokenizers are imported lazily (install ``transformers>=4.46``).
"""

from papers_shared.mllm.base import (
    ImageLike,
    MultimodalLM,
    ScriptedModel,
    check_batch,
    match_single_option,
    normalize_answer,
    normalize_option,
    to_pil_image,
)
from papers_shared.mllm.hf import HFImageTextModel, resolve_model_path
from papers_shared.mllm.tiny import (
    SPECIAL_TOKENS,
    TINY_CHAT_TEMPLATE,
    build_tiny_llava,
    tiny_llava_processor,
    vocabulary_from_texts,
    word_level_tokenizer,
)

__all__ = [
    "SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "HFImageTextModel",
    "ImageLike",
    "MultimodalLM",
    "ScriptedModel",
    "build_tiny_llava",
    "check_batch",
    "match_single_option",
    "normalize_answer",
    "normalize_option",
    "resolve_model_path",
    "tiny_llava_processor",
    "to_pil_image",
    "vocabulary_from_texts",
    "word_level_tokenizer",
]
