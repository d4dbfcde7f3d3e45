"""Task heads: CLIP zero-shot classification heads (never merged; one per task, as in the official
``merge_vit/heads.py:build_classification_head``) and the image encoder they sit on.

The official code builds each head from the CLIP text tower with the task-vectors template lists; we use
our own two prompts per dataset (:data:`CLIP_TEMPLATES`, README Deviations).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CLIP_TEMPLATES", "ClipEncoder", "zeroshot_head"]

# Our own short prompt sets (one generic and one domain prompt per dataset).
CLIP_TEMPLATES = {
    "SUN397": ["a photo of a {}.", "a photo of the {}, a type of scene."],
    "Cars": ["a photo of a {}.", "a photo of the {}, a type of car."],
    "RESISC45": ["satellite imagery of {}.", "an aerial photo of {}."],
    "EuroSAT": ["a satellite photo of {}.", "a centered satellite image of {}."],
    "SVHN": ['a photo of the number: "{}".', "a street sign showing the digit {}."],
    "GTSRB": ['a traffic sign meaning "{}".', "a photo of the traffic sign {}."],
    "MNIST": ['a photo of the number: "{}".', "a handwritten digit {}."],
    "DTD": ["a photo of a {} texture.", "a close-up photo of a {} surface."],
}


class ClipEncoder(nn.Module):
    """CLIP image encoder = vision tower + projection (open_clip's ``encode_image``) and a linear
    zero-shot head (normalised features, ``logit_scale``-scaled class embeddings) whose weight is
    replaced per task through ``overrides``."""

    def __init__(self, vision: nn.Module, projection: nn.Module, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.vision = vision
        self.projection = projection
        self.head = nn.Linear(projection.out_features, 1, bias=False)
        self.logit_scale = logit_scale

    def embed(self, pixel_values: Tensor) -> Tensor:
        """The retrieval feature of Auto-Switch: the projected, unnormalised image embedding."""
        return self.projection(self.vision(pixel_values=pixel_values).pooler_output)

    def forward(self, pixel_values: Tensor) -> Tensor:
        f = self.embed(pixel_values)
        return self.head(f / f.norm(dim=-1, keepdim=True))


@torch.no_grad()
def zeroshot_head(clip_model, tokenizer, classnames: list[str], templates: list[str]) -> Tensor:
    """``[C, D]``: ``logit_scale * normalize(mean_t normalize(text(t(c))))`` (task-vectors convention)."""
    rows = []
    for c in classnames:
        tok = tokenizer([t.format(c) for t in templates], padding=True, return_tensors="pt")
        tok = {k: v.to(clip_model.logit_scale.device) for k, v in tok.items()}
        e = clip_model.get_text_features(**tok)
        e = getattr(e, "pooler_output", e)
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        rows.append(m / m.norm())
    return torch.stack(rows) * clip_model.logit_scale.exp()
