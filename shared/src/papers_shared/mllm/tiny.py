"""A tiny random LLaVA built from configs, with an in-memory word-level tokenizer and processor.

No hub file is read: the tokenizer is a ``tokenizers`` WordLevel model (vocabulary = the words of the
texts you pass + special tokens) wrapped in ``PreTrainedTokenizerFast``; the processor is a real
``LlavaProcessor`` (``LlavaImageProcessor`` resizing to ``image_size`` with CLIP normalisation + the
tokenizer + a LLaVA-1.5-style chat template), so the tiny model runs through exactly the same
:class:`~papers_shared.mllm.hf.HFImageTextModel` code path as a real checkpoint. Its weights are random:
answers are word salad drawn from the vocabulary, which is what tests of plumbing, determinism,
parsing and fallbacks need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from papers_shared.mllm.hf import HFImageTextModel

__all__ = [
    "SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "build_tiny_llava",
    "tiny_llava_processor",
    "vocabulary_from_texts",
    "word_level_tokenizer",
]

#: ``(pad, unk, bos, eos, image)``; their ids are 0..4 in that order.
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")

#: LLaVA-1.5 conversation layout: ``USER: <image>\n{text} ASSISTANT:``.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_WORD = re.compile(r"\w+|[^\w\s]+")


def vocabulary_from_texts(texts: Iterable[str], lowercase: bool = True) -> list[str]:
    """Sorted unique pre-tokens of ``texts``: runs of word characters and runs of punctuation, the split
    of the ``Whitespace`` pre-tokenizer (``_`` is a word character, so ``aquarium_fish`` stays one word)."""
    words: set[str] = set()
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        for w in _WORD.findall(t.lower() if lowercase else t):
            if w not in SPECIAL_TOKENS:
                words.add(w)
    return sorted(words)


def word_level_tokenizer(words: Iterable[str], lowercase: bool = True):
    """``PreTrainedTokenizerFast`` over a WordLevel vocabulary: specials (ids 0..4) then ``words``.

    Pre-tokenisation splits on whitespace and punctuation (``Whitespace``), unknown words map to
    ``<unk>``, and decoding joins words with spaces (no space before punctuation).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        w = w.lower() if lowercase else w
        if w and w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_llava_processor(
    tokenizer, image_size: int = 16, patch_size: int = 4, chat_template: str | None = None
):
    """A ``LlavaProcessor`` built in memory: CLIP-normalised ``image_size`` crops, one ``<image>`` placeholder
    expanded to ``(image_size // patch_size) ** 2`` tokens (CLS dropped, ``"default"`` strategy)."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    image_processor = LlavaImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=chat_template if chat_template is not None else TINY_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_tiny_llava(
    texts: Iterable[str] = (),
    *,
    words: Iterable[str] = (),
    image_size: int = 16,
    patch_size: int = 4,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    seed: int = 0,
    chat_template: bool | str = True,
    batch_size: int = 8,
) -> HFImageTextModel:
    """A random ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama text model) ready to use.

    The vocabulary is the chat-template words, the words of ``texts`` (prompts, class names; see
    :func:`vocabulary_from_texts`) and ``words`` verbatim. Weights are drawn with ``torch.manual_seed(seed)``
    inside a forked RNG, so the global RNG is untouched and the same seed gives the same model.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vocab = vocabulary_from_texts(["USER: ASSISTANT:", *texts])
    vocab += [w.lower() for w in words if w.lower() not in set(vocab)]
    tokenizer = word_level_tokenizer(vocab)
    processor = tiny_llava_processor(tokenizer, image_size, patch_size)
    num_patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=num_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return HFImageTextModel(model, processor, chat_template=chat_template, batch_size=batch_size)
