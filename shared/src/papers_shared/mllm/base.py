"""The multimodal-LM protocol, input checks, a scripted test double and the single-option answer matcher.

Nothing here is specific to one paper: prompts and class names belong to the packages that use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "ImageLike",
    "MultimodalLM",
    "ScriptedModel",
    "check_batch",
    "match_single_option",
    "normalize_answer",
    "normalize_option",
    "normalize_options_arg",
    "to_pil_image",
]

#: What the interface accepts as an image: a PIL image, a ``[C, H, W]`` tensor (float in [0, 1] or
#: uint8), or an ``[H, W, C]`` uint8 numpy array. Grey images (C = 1) are replicated to RGB.
ImageLike = Any


@runtime_checkable
class MultimodalLM(Protocol):
    """An image-text-to-text model seen as two deterministic functions.

    ``generate`` decodes greedily (no sampling, one beam), so the same inputs always give the same text.
    ``score_options`` returns ``[B, K]`` sums of log-probabilities of each option's tokens following the
    prompt (teacher forcing), the "log-likelihood" answer mode of multiple-choice evaluation.
    """

    def generate(
        self, images: Sequence[ImageLike], prompts: Sequence[str], max_new_tokens: int = 128
    ) -> list[str]: ...

    def score_options(
        self,
        images: Sequence[ImageLike],
        prompts: Sequence[str],
        options: Sequence[str] | Sequence[Sequence[str]],
    ) -> torch.Tensor: ...


def check_batch(images: Sequence[ImageLike], prompts: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``images`` and ``prompts`` are sequences of equal length of strings."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if isinstance(images, (torch.Tensor, np.ndarray)) and getattr(images, "ndim", 0) == 3:
        raise TypeError("images must be a sequence of images; wrap a single image in a list")
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts[{bad[0]}] is {type(prompts[bad[0]]).__name__}, not str")


def normalize_options_arg(options: Sequence[str] | Sequence[Sequence[str]], batch: int) -> list[list[str]]:
    """Broadcast one shared option list to every sample, or check a per-sample list of equal-length lists."""
    if isinstance(options, str):
        raise TypeError("options must be a list of strings (shared) or a list of lists (per sample)")
    if len(options) == 0:
        raise ValueError("options is empty")
    if all(isinstance(o, str) for o in options):
        per = [list(options) for _ in range(batch)]
    else:
        if len(options) != batch:
            raise ValueError(f"got {len(options)} option lists for {batch} samples")
        per = [list(o) for o in options]
        sizes = {len(o) for o in per}
        if len(sizes) != 1:
            raise ValueError(f"every sample needs the same number of options, got sizes {sorted(sizes)}")
    for row in per:
        if len(row) == 0:
            raise ValueError("each sample needs at least one option")
        for o in row:
            if not isinstance(o, str) or not o.strip():
                raise ValueError(f"options must be non-empty strings, got {o!r}")
    return per


def to_pil_image(image: ImageLike):
    """Convert an :data:`ImageLike` to an RGB ``PIL.Image`` (float tensors are read as values in [0, 1])."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(f"numpy images must be [H, W] or [H, W, C], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            return to_pil_image(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))
        return Image.fromarray(arr if arr.shape[2] != 1 else arr[..., 0]).convert("RGB")
    if isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"tensor images must be [C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            x = x.float()
            if not torch.isfinite(x).all():
                raise ValueError("image tensor contains NaN or inf")
            if x.min() < -1e-3 or x.max() > 1 + 1e-3:
                raise ValueError(
                    f"float image tensors must hold values in [0, 1], got [{float(x.min()):.3g}, "
                    f"{float(x.max()):.3g}] (un-normalise first)"
                )
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())
    raise TypeError(f"unsupported image type {type(image).__name__}; use PIL, a [C,H,W] tensor or numpy")


_NON_LETTERS = re.compile(r"[^a-zA-Z]")
_SPACES = re.compile(r"\s+")


def normalize_answer(text: str, case_sensitive: bool = False) -> str:
    """Every non-letter becomes a space, runs of spaces collapse, ends are stripped, then lower-case."""
    out = _SPACES.sub(" ", _NON_LETTERS.sub(" ", text)).strip()
    return out if case_sensitive else out.lower()


def normalize_option(option: str, strip_non_letters: bool = True, case_sensitive: bool = False) -> str:
    """``_`` becomes a space; with ``strip_non_letters`` the option is normalised like an answer.

    ``strip_non_letters=False`` keeps digits and punctuation in the option (only ``_`` and case are
    handled), so an option such as ``"t-shirt"`` can then never occur in a normalised answer.
    """
    out = option.replace("_", " ")
    if strip_non_letters:
        return normalize_answer(out, case_sensitive)
    out = out.strip()
    return out if case_sensitive else out.lower()


def match_single_option(
    answer: str,
    options: Sequence[str],
    mode: str = "substring",
    *,
    normalize: bool = True,
    strip_option_non_letters: bool = True,
    case_sensitive: bool = False,
) -> int | None:
    """Index of the only option that occurs in ``answer``, or ``None`` when zero or several occur.

    Normalisation (``normalize=True``): in the answer every non-letter becomes a space and spaces
    collapse; in each option ``_`` becomes a space (and non-letters are stripped the same way when
    ``strip_option_non_letters``); both are lower-cased unless ``case_sensitive``.

    ``mode="substring"`` tests ``option in answer`` (so ``"cat"`` hits inside ``"caterpillar"``);
    ``mode="word"`` requires the option to start and end on word boundaries of the normalised answer.
    ``normalize=False`` is the raw test ``option in answer`` on the unmodified strings (word mode then
    uses ``\\b`` boundaries). Options that normalise to an empty string never match.
    """
    if mode not in ("substring", "word"):
        raise ValueError(f"mode must be 'substring' or 'word', got {mode!r}")
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a string, got {type(answer).__name__}")
    if isinstance(options, str):
        raise TypeError("options must be a sequence of strings, not one string")
    if normalize:
        text = normalize_answer(answer, case_sensitive)
        padded = f" {text} "
    hits = []
    for i, opt in enumerate(options):
        if normalize:
            o = normalize_option(opt, strip_option_non_letters, case_sensitive)
            if not o:
                continue
            hit = (f" {o} " in padded) if mode == "word" else (o in text)
        else:
            o, a = (opt, answer) if case_sensitive else (opt.lower(), answer.lower())
            if not o:
                continue
            hit = (re.search(rf"\b{re.escape(o)}\b", a) is not None) if mode == "word" else (o in a)
        if hit:
            hits.append(i)
    return hits[0] if len(hits) == 1 else None


class ScriptedModel:
    """A deterministic :class:`MultimodalLM` for tests and controlled experiments.

    ``answer`` is a callable ``(image, prompt) -> str``, a mapping ``prompt -> str`` (missing prompts
    give ``default``) or a constant string. ``scorer`` is an optional callable
    ``(image, prompt, option) -> float``; without it an option scores ``0.0`` (log 1) when it occurs in
    the scripted answer (:func:`match_single_option`'s normalisation, substring test) and ``-1.0``
    otherwise. Every call is recorded in ``calls`` as ``(method, prompt)``.
    """

    def __init__(
        self,
        answer: Callable[[ImageLike, str], str] | Mapping[str, str] | str,
        scorer: Callable[[ImageLike, str, str], float] | None = None,
        default: str = "",
    ) -> None:
        self._answer = answer
        self._scorer = scorer
        self.default = default
        self.calls: list[tuple[str, str]] = []

    def _answer_one(self, image: ImageLike, prompt: str) -> str:
        if callable(self._answer):
            out = self._answer(image, prompt)
        elif isinstance(self._answer, Mapping):
            out = self._answer.get(prompt, self.default)
        else:
            out = self._answer
        if not isinstance(out, str):
            raise TypeError(f"scripted answer must be a string, got {type(out).__name__}")
        return out

    def generate(
        self, images: Sequence[ImageLike], prompts: Sequence[str], max_new_tokens: int = 128
    ) -> list[str]:
        check_batch(images, prompts)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.calls += [("generate", p) for p in prompts]
        return [self._answer_one(im, p) for im, p in zip(images, prompts)]

    def score_options(
        self,
        images: Sequence[ImageLike],
        prompts: Sequence[str],
        options: Sequence[str] | Sequence[Sequence[str]],
    ) -> torch.Tensor:
        check_batch(images, prompts)
        per = normalize_options_arg(options, len(prompts))
        self.calls += [("score_options", p) for p in prompts]
        out = torch.empty(len(prompts), len(per[0]) if per else 0)
        for b, (im, p) in enumerate(zip(images, prompts)):
            if self._scorer is None:
                text = normalize_answer(self._answer_one(im, p))
            for k, o in enumerate(per[b]):
                if self._scorer is not None:
                    v = float(self._scorer(im, p, o))
                else:
                    v = 0.0 if normalize_option(o) and normalize_option(o) in text else -1.0
                if math.isnan(v):
                    raise ValueError(f"scorer returned NaN for option {o!r}")
                out[b, k] = v
        return out
