"""``CLIPCandidateLargeModel``: a non-generative slow path (ours).

CLIP zero-shot scores over the fast path's top-k candidates: ``score_options`` returns the log-softmax of
CLIP's image-text logits over the options (text ``template.format(name=option)``); the prompt is ignored.
It has no ``generate``, so the slow path needs ``slow.answer_mode=loglik`` and the text memory falls back
to ``describe_mode="class_name_only"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from papers_shared.data.errors import DatasetNotFoundError
from papers_shared.mllm.base import check_batch, normalize_options_arg, to_pil_image

__all__ = ["CLIP_MEAN", "CLIP_STD", "CLIPCandidateLargeModel"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor) and image.dtype.is_floating_point and image.ndim == 3:
        x = image.detach().cpu().float()
        if not torch.isfinite(x).all():
            raise ValueError("image tensor contains NaN or inf")
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x
    import numpy as np

    arr = np.asarray(to_pil_image(image), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


class CLIPCandidateLargeModel:
    def __init__(
        self,
        model,
        tokenizer,
        image_size: int,
        template: str = "a photo of a {name}.",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if "{name}" not in template:
            raise ValueError("template must contain '{name}'")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.template = template
        self.mean = torch.tensor(list(mean)).view(3, 1, 1)
        self.std = torch.tensor(list(std)).view(3, 1, 1)

    @classmethod
    def from_pretrained(cls, model_id: str = "openai/clip-vit-base-patch16", **kw) -> CLIPCandidateLargeModel:
        from transformers import AutoTokenizer, CLIPModel

        from papers_shared.mllm import resolve_model_path

        path = resolve_model_path(model_id)
        try:
            model = CLIPModel.from_pretrained(path)
            tok = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise DatasetNotFoundError(
                f"HF hub model {os.fspath(model_id)!r}", None, f"Could not load it ({str(exc)[:200]})."
            ) from exc
        return cls(model, tok, model.config.vision_config.image_size, **kw)

    @classmethod
    def tiny(cls, names: Sequence[str], image_size: int = 16, seed: int = 0, **kw) -> CLIPCandidateLargeModel:
        """A random tiny CLIP from configs with a word-level tokenizer over the template + names (tests)."""
        from transformers import CLIPConfig, CLIPModel

        from papers_shared.mllm import vocabulary_from_texts, word_level_tokenizer

        template = kw.get("template", "a photo of a {name}.")
        tok = word_level_tokenizer(vocabulary_from_texts([template.replace("{name}", ""), *names]))
        cfg = CLIPConfig(
            text_config={
                "vocab_size": len(tok),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 32,
                "pad_token_id": tok.pad_token_id,
                "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id,
            },
            vision_config={
                "image_size": image_size,
                "patch_size": 4,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            },
            projection_dim=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(cfg)
        return cls(model, tok, image_size, **kw)

    def _pixels(self, images) -> torch.Tensor:
        xs = [_to_tensor(im) for im in images]
        x = torch.stack([F.interpolate(t[None], size=(self.image_size,) * 2, mode="bilinear")[0] for t in xs])
        return (x - self.mean) / self.std

    @torch.no_grad()
    def score_options(self, images, prompts, options) -> torch.Tensor:
        """``[B, K]`` log-softmax over each sample's options of CLIP's image-text logits."""
        check_batch(images, prompts)
        per = normalize_options_arg(options, len(prompts))
        pix = self._pixels(images)
        out = torch.empty(len(prompts), len(per[0]))
        dev = next(self.model.parameters()).device
        for b, opts in enumerate(per):
            enc = self.tokenizer(
                [self.template.format(name=o.replace("_", " ")) for o in opts],
                return_tensors="pt",
                padding=True,
            )
            res = self.model(
                input_ids=enc["input_ids"].to(dev),
                attention_mask=enc["attention_mask"].to(dev),
                pixel_values=pix[b : b + 1].to(dev),
            )
            out[b] = res.logits_per_image[0].float().log_softmax(0).cpu()
        return out
