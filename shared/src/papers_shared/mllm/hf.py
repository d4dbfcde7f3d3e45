"""A :class:`~papers_shared.mllm.base.MultimodalLM` backed by transformers' image-text-to-text models.

Works with any checkpoint that loads through ``AutoModelForImageTextToText`` + ``AutoProcessor``
(LLaVA-1.5, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Idefics3, PaliGemma, ...), with a hub id, a local folder,
or a model and processor that are already built (e.g. the tiny random LLaVA of
:func:`papers_shared.mllm.tiny.build_tiny_llava`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from papers_shared.data.errors import DatasetNotFoundError
from papers_shared.mllm.base import (
    ImageLike,
    check_batch,
    normalize_options_arg,
    to_pil_image,
)

__all__ = ["HFImageTextModel", "resolve_model_path"]


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    env = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return env.strip().lower() in ("1", "true", "yes", "on")


def resolve_model_path(model_id: str | os.PathLike, local_files_only: bool | None = None) -> str:
    """A local folder as is; a hub id as its cached snapshot folder.

    When the id is not cached: offline (``local_files_only=True`` or ``HF_HUB_OFFLINE=1``) this raises
    :class:`~papers_shared.data.DatasetNotFoundError` with the download command; online the id is
    returned unchanged so that ``from_pretrained`` downloads it.
    """
    from papers_shared.data.hf import require_hub_model

    path = Path(os.fspath(model_id)).expanduser()
    if path.is_dir():
        return str(path)
    text = os.fspath(model_id)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise DatasetNotFoundError(
            "Model folder", path, "Pass an existing local folder saved with save_pretrained, or a hub id."
        )
    try:
        return require_hub_model(text)
    except DatasetNotFoundError:
        if _offline(local_files_only):
            raise
        return text


class HFImageTextModel:
    """Greedy generation and option scoring with a transformers image-text-to-text model.

    Args:
        model: hub id, local folder, or a built ``PreTrainedModel`` (then ``processor`` is required).
        processor: the matching processor (``AutoProcessor``); loaded from ``model`` when it is a path/id.
        dtype: weights dtype when loading (e.g. ``torch.float16`` on GPU); ``None`` keeps the checkpoint's.
        device: device to move a loaded model to (ignored with ``device_map``).
        device_map: passed to ``from_pretrained`` (``"auto"`` for multi-GPU sharding).
        chat_template: ``True`` uses the processor's chat template when it has one (the image as the
            first content item of one user turn, then the generation prompt); a string is used as the
            Jinja template instead; ``False`` sends ``"<image>\\n" + prompt`` (LLaVA-style raw prompt).
        batch_size: sequences per forward/generate call.
        option_prefix: text put between the prompt and an option in :meth:`score_options` (``" "``:
            the option as the first word of the assistant's reply).
        local_files_only: ``True`` never downloads; ``None`` follows ``HF_HUB_OFFLINE``.
        generation_kwargs: extra ``generate`` arguments (e.g. ``repetition_penalty``); sampling
            arguments are rejected because the interface is deterministic.
    """

    def __init__(
        self,
        model: str | os.PathLike | Any,
        processor: Any = None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
        chat_template: bool | str = True,
        batch_size: int = 8,
        option_prefix: str = " ",
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gk = dict(generation_kwargs or {})
        bad = sorted(set(gk) & {"do_sample", "temperature", "top_p", "top_k", "num_beams"})
        if bad:
            raise ValueError(
                f"generation_kwargs {bad} are not allowed: generation is greedy and deterministic"
            )
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            path = resolve_model_path(model, local_files_only)
            kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if _offline(local_files_only):
                kw["local_files_only"] = True
            try:
                if processor is None:
                    processor = AutoProcessor.from_pretrained(path, **kw)
                model = AutoModelForImageTextToText.from_pretrained(
                    path, dtype=dtype, device_map=device_map, **kw
                )
            except OSError as exc:
                raise DatasetNotFoundError(
                    f"HF hub model {os.fspath(model)!r}",
                    None,
                    f"Could not load it ({str(exc)[:300]}). On a machine with internet run "
                    f"`hf download {os.fspath(model)}` and set HF_HOME to that cache, or pass a local folder.",
                ) from exc
            if device is not None and device_map is None:
                model = model.to(device)
        elif processor is None:
            raise ValueError("a built model needs its processor: HFImageTextModel(model, processor)")
        elif device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.chat_template = chat_template
        self.batch_size = batch_size
        self.option_prefix = option_prefix
        self.generation_kwargs = gk

    # ------------------------------------------------------------------ prompts
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", None) or "<image>"

    def format_prompt(self, prompt: str) -> str:
        """The full model input text for one image and one user prompt (see ``chat_template``)."""
        template = self.chat_template
        if isinstance(template, str) or (template and getattr(self.processor, "chat_template", None)):
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            kw = {"chat_template": template} if isinstance(template, str) else {}
            return self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False, **kw)
        if self.image_token in prompt:
            return prompt
        return f"{self.image_token}\n{prompt}"

    def _encode(self, images: list[Any], texts: list[str], padding_side: str) -> dict[str, torch.Tensor]:
        enc = self.processor(
            images=images, text=texts, return_tensors="pt", padding=True, padding_side=padding_side
        )
        dtype = next(self.model.parameters()).dtype
        out = {}
        for k, v in enc.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return out

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def generate(
        self, images: Sequence[ImageLike], prompts: Sequence[str], max_new_tokens: int = 128
    ) -> list[str]:
        """Greedy answers, one string per (image, prompt), special tokens removed, whitespace stripped."""
        check_batch(images, prompts)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        pil = [to_pil_image(im) for im in images]
        texts = [self.format_prompt(p) for p in prompts]
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        answers: list[str] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self._encode(pil[s : s + self.batch_size], texts[s : s + self.batch_size], "left")
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                **self.generation_kwargs,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [a.strip() for a in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return answers

    @torch.no_grad()
    def score_options(
        self,
        images: Sequence[ImageLike],
        prompts: Sequence[str],
        options: Sequence[str] | Sequence[Sequence[str]],
    ) -> torch.Tensor:
        """``[B, K]`` float32 (CPU): ``sum_j log p(option token j | prompt, option tokens < j, image)``.

        The option's tokens are those of ``format_prompt(prompt) + option_prefix + option`` after the
        longest common prefix with the tokenised prompt alone (robust to merges at the boundary).
        """
        check_batch(images, prompts)
        per = normalize_options_arg(options, len(prompts))
        pil = [to_pil_image(im) for im in images]
        texts = [self.format_prompt(p) for p in prompts]
        jobs: list[tuple[int, int, Any, str, str]] = []
        for b, (im, t) in enumerate(zip(pil, texts)):
            for k, o in enumerate(per[b]):
                jobs.append((b, k, im, t, t + self.option_prefix + o))
        scores = torch.empty(len(prompts), len(per[0]), dtype=torch.float32)
        for s in range(0, len(jobs), self.batch_size):
            chunk = jobs[s : s + self.batch_size]
            ims = [j[2] for j in chunk]
            prompt_ids = self._encode(ims, [j[3] for j in chunk], "right")
            full = self._encode(ims, [j[4] for j in chunk], "right")
            logits = self.model(**full).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = full["input_ids"][:, 1:]
            tok_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            for r, (b, k, _, _, o) in enumerate(chunk):
                n_full = int(full["attention_mask"][r].sum())
                n_prompt = int(prompt_ids["attention_mask"][r].sum())
                a, p = full["input_ids"][r, :n_full], prompt_ids["input_ids"][r, :n_prompt]
                m = min(n_full, n_prompt)
                diff = (a[:m] != p[:m]).nonzero()
                start = int(diff[0]) if diff.numel() else m
                if start == 0:
                    raise ValueError("the prompt encodes to no tokens")
                if start >= n_full:
                    raise ValueError(f"option {o!r} adds no tokens after the prompt")
                scores[b, k] = tok_logp[r, start - 1 : n_full - 1].sum().cpu()
        return scores
