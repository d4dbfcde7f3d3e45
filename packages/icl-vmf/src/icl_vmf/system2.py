"""System2: the slow multimodal LLM, its prompts and the answer -> class mapping (official
``utils/cor_with_slow.py:Inference_with_slow`` / ``InferenceWithSlowModel``, commit 8c8ad10).

Every System2 implements one method, :meth:`System2.choose`: given images and, per image, the candidate
class names (System1's top-k, best first), return the raw answers and the index of the chosen candidate
or ``None`` (then the caller keeps System1's prediction: the fallback rule).

* :class:`MLLMSystem2` wraps any :class:`papers_shared.mllm.MultimodalLM` (a transformers checkpoint via
  :class:`~papers_shared.mllm.HFImageTextModel`, the tiny random LLaVA, a scripted model).
* :class:`TwoTurnSystem2` is the MiniGPT-4 protocol: describe the image, then choose.
* :class:`OracleSystem2` answers from the true labels with a given accuracy (controlled experiments).
* :class:`CLIPCandidateSystem2` [ours] scores the candidates with CLIP zero-shot (never falls back).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from papers_shared.mllm import HFImageTextModel, MultimodalLM, ScriptedModel, match_single_option

__all__ = [
    "DESCRIBE_PROMPT",
    "MINIGPT4_TEMPLATE",
    "PUREMM_TEMPLATE",
    "CLIPCandidateSystem2",
    "HFVisionLanguageSystem2",
    "MLLMSystem2",
    "OracleSystem2",
    "ScriptedSystem2",
    "System2",
    "System2Output",
    "TwoTurnSystem2",
    "build_system2",
    "format_candidates",
    "format_prompt",
    "parse_answer",
]

#: Single-turn user message of the PureMM / INF-MLLM path (the image is the turn's first item).
PUREMM_TEMPLATE = (
    "Answer which class the picture is belong to: {fill}? Please choose one most possible class."
)
#: MiniGPT-4 turn 1 (sic: "the the").
DESCRIBE_PROMPT = "Describe the the given image."
#: MiniGPT-4 turn 2.
MINIGPT4_TEMPLATE = (
    "From your description, answer which category the picture is belong to: {fill}? "
    "Please choose one most possible category."
)
TEMPLATES = {"puremm": PUREMM_TEMPLATE, "minigpt4": MINIGPT4_TEMPLATE}


def format_candidates(names: Sequence[str]) -> str:
    """``"a, b or c"``: ``", ".join(names[:-1]) + " or " + names[-1]``; one name is returned alone."""
    names = list(names)
    if not names:
        raise ValueError("need at least one candidate name")
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def format_prompt(names: Sequence[str], template: str = PUREMM_TEMPLATE) -> str:
    """The user message for a candidate list (``template`` holds one ``{fill}``)."""
    return template.format(fill=format_candidates(names))


def parse_answer(
    text: str, candidates: Sequence[str], mode: str = "substring", style: str = "puremm", legacy: bool = False
) -> int | None:
    """Index of the only candidate named in ``text``, else ``None`` (fallback to System1).

    ``style="puremm"``: non-letters of the answer become spaces, case is ignored, ``_`` in names means a
    space (``"aquarium fish"`` matches ``aquarium_fish``); with ``legacy=True`` candidate names keep
    other non-letters as in the code (so ``"t-shirt"`` can never match). ``style="minigpt4"`` with
    ``legacy=True`` is the code's stricter MiniGPT-4 test: raw, case-sensitive, no ``_`` handling.
    ``mode="word"`` requires word boundaries (``cat`` does not hit inside ``caterpillar``).
    """
    if style == "minigpt4" and legacy:
        return match_single_option(text, candidates, mode, normalize=False, case_sensitive=True)
    return match_single_option(text, candidates, mode, strip_option_non_letters=not legacy)


class System2Output:
    """Per-image results of one :meth:`System2.choose` call."""

    __slots__ = ("choices", "raw")

    def __init__(self, choices: list[int | None], raw: list[str]) -> None:
        self.choices, self.raw = choices, raw


class System2:
    """Base class: ``choose(images, candidates, labels=None) -> System2Output``.

    ``candidates[i]`` lists the class names offered for image ``i`` (best first); ``labels`` (true class
    names, or None) is used only by oracles.
    """

    def choose(
        self,
        images: Sequence[Any],
        candidates: Sequence[Sequence[str]],
        labels: Sequence[str] | None = None,
    ) -> System2Output:
        raise TypeError(f"{type(self).__name__} must override choose()")


class MLLMSystem2(System2):
    """A multimodal LLM asked the official prompt; answers are parsed (``answer_mode="generate"``) or the
    candidates are ranked by log-likelihood (``answer_mode="loglik"``, [ours], never falls back)."""

    def __init__(
        self,
        mllm: MultimodalLM,
        template: str = PUREMM_TEMPLATE,
        answer_mode: str = "generate",
        parse_mode: str = "substring",
        legacy_parse: bool = False,
        max_new_tokens: int = 128,
    ) -> None:
        if answer_mode not in ("generate", "loglik"):
            raise ValueError(f"answer_mode must be 'generate' or 'loglik', got {answer_mode!r}")
        if "{fill}" not in template:
            raise ValueError("template must contain '{fill}'")
        self.mllm, self.template, self.answer_mode = mllm, template, answer_mode
        self.parse_mode, self.legacy_parse, self.max_new_tokens = parse_mode, legacy_parse, max_new_tokens

    def prompts(self, candidates: Sequence[Sequence[str]]) -> list[str]:
        return [format_prompt(c, self.template) for c in candidates]

    def choose(self, images, candidates, labels=None) -> System2Output:
        prompts = self.prompts(candidates)
        if self.answer_mode == "loglik":
            scores = self.mllm.score_options(images, prompts, [list(c) for c in candidates])
            best = scores.argmax(1).tolist()
            return System2Output(best, [candidates[i][b] for i, b in enumerate(best)])
        raw = self.mllm.generate(images, prompts, max_new_tokens=self.max_new_tokens)
        return System2Output(
            [
                parse_answer(a, c, self.parse_mode, "puremm", self.legacy_parse)
                for a, c in zip(raw, candidates)
            ],
            raw,
        )


class HFVisionLanguageSystem2(MLLMSystem2):
    """:class:`MLLMSystem2` over a transformers image-text-to-text checkpoint (hub id or folder):
    LLaVA-1.5 (``llava-hf/llava-1.5-7b-hf``, the closest open stand-in for PureMM), Qwen2-VL, Idefics3...
    Extra keyword arguments go to :class:`papers_shared.mllm.HFImageTextModel` (``dtype``, ``device``,
    ``device_map``, ``batch_size``, ``local_files_only``)."""

    def __init__(
        self,
        model_id: str,
        template: str = PUREMM_TEMPLATE,
        answer_mode: str = "generate",
        parse_mode: str = "substring",
        max_new_tokens: int = 128,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(
            HFImageTextModel(model_id, **model_kwargs),
            template,
            answer_mode,
            parse_mode,
            False,
            max_new_tokens,
        )


class TwoTurnSystem2(MLLMSystem2):
    """MiniGPT-4 protocol: turn 1 :data:`DESCRIBE_PROMPT`, turn 2 :data:`MINIGPT4_TEMPLATE` with the
    description in the conversation; wraps a multimodal LM or another :class:`MLLMSystem2` (its model is
    reused). With :class:`~papers_shared.mllm.HFImageTextModel` the two turns
    go through the processor's chat template as one conversation; with other models turn 2's prompt is
    the text of turn 1, its answer and the question, joined by newlines."""

    def __init__(
        self,
        mllm: MultimodalLM,
        parse_mode: str = "substring",
        legacy_parse: bool = False,
        max_new_tokens: int = 300,
    ) -> None:
        if isinstance(mllm, MLLMSystem2):  # e.g. TwoTurnSystem2(HFVisionLanguageSystem2(model_id))
            mllm = mllm.mllm
        super().__init__(mllm, MINIGPT4_TEMPLATE, "generate", parse_mode, legacy_parse, max_new_tokens)

    def _conversation(self, description: str, question: str) -> str:
        m = self.mllm
        if (
            isinstance(m, HFImageTextModel)
            and getattr(m.processor, "chat_template", None)
            and m.chat_template
        ):
            conv = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE_PROMPT}]},
                {"role": "assistant", "content": [{"type": "text", "text": description}]},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ]
            kw = {"chat_template": m.chat_template} if isinstance(m.chat_template, str) else {}
            return m.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False, **kw)
        return f"{DESCRIBE_PROMPT}\n{description}\n{question}"

    def choose(self, images, candidates, labels=None) -> System2Output:
        descriptions = self.mllm.generate(images, [DESCRIBE_PROMPT] * len(images), self.max_new_tokens)
        texts = [self._conversation(d, q) for d, q in zip(descriptions, self.prompts(candidates))]
        m = self.mllm
        if (
            isinstance(m, HFImageTextModel)
            and getattr(m.processor, "chat_template", None)
            and m.chat_template
        ):
            raw_view = HFImageTextModel(m.model, m.processor, chat_template=False, batch_size=m.batch_size)
            raw = raw_view.generate(images, texts, self.max_new_tokens)
        else:
            raw = m.generate(images, texts, self.max_new_tokens)
        return System2Output(
            [
                parse_answer(a, c, self.parse_mode, "minigpt4", self.legacy_parse)
                for a, c in zip(raw, candidates)
            ],
            raw,
        )


class OracleSystem2(System2):
    """Names the true class with probability ``accuracy`` when it is among the candidates, otherwise a
    uniformly drawn wrong candidate (the answer text goes through the same parser as a real MLLM)."""

    def __init__(self, accuracy: float = 1.0, seed: int = 0, parse_mode: str = "substring") -> None:
        if not 0 <= accuracy <= 1:
            raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
        self.accuracy, self.parse_mode = accuracy, parse_mode
        self.generator = torch.Generator().manual_seed(seed)

    def choose(self, images, candidates, labels=None) -> System2Output:
        if labels is None or len(labels) != len(candidates):
            raise ValueError("OracleSystem2 needs the true class name of every image (labels=...)")
        raw = []
        for cands, truth in zip(candidates, labels):
            right = truth in cands and float(torch.rand((), generator=self.generator)) < self.accuracy
            if right:
                name = truth
            else:
                wrong = [c for c in cands if c != truth]
                name = wrong[int(torch.randint(len(wrong), (), generator=self.generator))] if wrong else truth
            raw.append(f"It is a {name.replace('_', ' ')}.")
        return System2Output([parse_answer(a, c, self.parse_mode) for a, c in zip(raw, candidates)], raw)


class ScriptedSystem2(MLLMSystem2):
    """:class:`MLLMSystem2` over :class:`papers_shared.mllm.ScriptedModel` (answers from a callable,
    a prompt -> answer mapping or a constant)."""

    def __init__(self, answer: Callable[[Any, str], str] | dict | str, **kwargs: Any) -> None:
        super().__init__(ScriptedModel(answer), **kwargs)


class CLIPCandidateSystem2(System2):
    """[ours] CLIP zero-shot restricted to the candidates: ``argmax_c cos(image, text("a photo of a c."))``.

    Non-generative, so it never falls back. ``model`` is a hub id / folder or a built ``CLIPModel`` with
    its ``processor`` (tests use a tiny ``CLIPConfig``).
    """

    def __init__(
        self,
        model: Any = "openai/clip-vit-large-patch14",
        processor: Any = None,
        template: str = "a photo of a {name}.",
        local_files_only: bool | None = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            from transformers import CLIPModel, CLIPProcessor

            from papers_shared.mllm import resolve_model_path

            path = resolve_model_path(model, local_files_only)
            model, processor = (
                CLIPModel.from_pretrained(path),
                processor or CLIPProcessor.from_pretrained(path),
            )
        elif processor is None:
            raise ValueError("a built CLIP model needs its processor")
        self.model, self.processor, self.template = model.eval(), processor, template

    @torch.no_grad()
    def choose(self, images, candidates, labels=None) -> System2Output:
        from papers_shared.mllm import to_pil_image

        choices, raw = [], []
        device = next(self.model.parameters()).device
        for im, cands in zip(images, candidates):
            texts = [self.template.format(name=c.replace("_", " ")) for c in cands]
            enc = self.processor(text=texts, images=[to_pil_image(im)], return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            best = int(self.model(**enc).logits_per_image[0].argmax())
            choices.append(best)
            raw.append(cands[best])
        return System2Output(choices, raw)


def build_system2(cfg, device: str | torch.device = "cpu", vocabulary: Sequence[str] = ()) -> System2:
    """A System2 from a :class:`~icl_vmf.config.System2Config`.

    ``backend="tiny"`` builds the random tiny LLaVA whose vocabulary is the prompt words + ``vocabulary``
    (class names): it proves the real generation path, not accuracy.
    """
    if cfg.backend == "oracle":
        return OracleSystem2(cfg.oracle_accuracy, parse_mode=cfg.parse_mode)
    if cfg.backend == "clip":
        return CLIPCandidateSystem2(cfg.model_id)
    if cfg.backend == "tiny":
        from papers_shared.mllm import build_tiny_llava

        texts = [
            PUREMM_TEMPLATE,
            MINIGPT4_TEMPLATE,
            DESCRIBE_PROMPT,
            *[v.replace("_", " ") for v in vocabulary],
        ]
        mllm = build_tiny_llava(texts, words=list(vocabulary), batch_size=cfg.batch_size)
    else:
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            cfg.dtype
        )
        if cfg.dtype == "auto":
            dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
        mllm = HFImageTextModel(
            cfg.model_id, dtype=dtype, device=device, device_map=cfg.device_map, batch_size=cfg.batch_size
        )
    if cfg.template == "minigpt4":
        return TwoTurnSystem2(mllm, cfg.parse_mode, cfg.legacy_parse, cfg.max_new_tokens)
    return MLLMSystem2(
        mllm, PUREMM_TEMPLATE, cfg.answer_mode, cfg.parse_mode, cfg.legacy_parse, cfg.max_new_tokens
    )
