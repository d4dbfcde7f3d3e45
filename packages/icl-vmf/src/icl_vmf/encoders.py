"""System1's image encoder: a (frozen) Hugging Face ViT returning token features (official
``backbone/cvt_online.py:Brain_Net_Vit``, commit 8c8ad10: ``ViTForImageClassification(...).vit``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FrozenViTEncoder",
    "ViTEncoder",
    "build_vit",
    "prepare_encoder",
    "pretrain_encoder",
    "tiny_vit_config",
]


def tiny_vit_config(**overrides: Any):
    """The tiny test encoder (ours): 16 px, patch 4 (L = 17 tokens), width 32, 2 layers, 4 heads."""
    from transformers import ViTConfig

    kw = dict(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    kw.update(overrides)
    return ViTConfig(**kw)


class ViTEncoder(nn.Module):
    """``x`` in [0, 1] ``[B, 3, H, W]`` -> token features ``H = ViT(x).last_hidden_state`` ``[B, L, D]``.

    The input is resized to ``image_size`` (bilinear; the code's ``Brain_Net_Vit.transform``; 0 disables) and normalised with
    ``mean``/``std`` inside the module, so datasets feed un-normalised images. ``trainable=False`` freezes
    every parameter (``requires_grad_(False)``, fixing the code's no-op attribute), keeps the ViT in eval
    mode and runs it under ``torch.no_grad()`` unless ``input_grad=True`` (needed only by the buffer's
    gradient-screening admission). ``trainable=True`` is the ViT fine-tuning baseline (the code's ``--vit_finetune``).
    """

    def __init__(
        self,
        model: nn.Module,
        normalize_mean: Sequence[float] = (0.5, 0.5, 0.5),
        normalize_std: Sequence[float] = (0.5, 0.5, 0.5),
        image_size: int = 224,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.vit = getattr(model, "vit", model)  # ViTForImageClassification -> its ViTModel
        self.image_size = int(image_size)
        self.trainable = bool(trainable)
        self.input_grad = False
        self.register_buffer(
            "mean", torch.tensor(list(normalize_mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(normalize_std), dtype=torch.float32).view(1, -1, 1, 1))
        if (self.std <= 0).any():
            raise ValueError("normalize_std must be positive")
        if not self.trainable:
            self.vit.requires_grad_(False)
            self.vit.eval()

    @property
    def hidden_size(self) -> int:
        return int(self.vit.config.hidden_size)

    @property
    def num_tokens(self) -> int:
        """L = number of patches + 1 (CLS) at the model's input size."""
        cfg = self.vit.config
        size = self.image_size or cfg.image_size
        return (size // cfg.patch_size) ** 2 + 1

    def train(self, mode: bool = True) -> ViTEncoder:
        super().train(mode)
        if not self.trainable:
            self.vit.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected images [B, {self.mean.shape[1]}, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf")
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        if self.trainable or self.input_grad:
            return self.vit(pixel_values=x).last_hidden_state
        with torch.no_grad():
            return self.vit(pixel_values=x).last_hidden_state


class FrozenViTEncoder(ViTEncoder):
    """:class:`ViTEncoder` with ``trainable=False`` (the System1 encoder)."""

    def __init__(
        self,
        model: nn.Module,
        normalize_mean: Sequence[float] = (0.5, 0.5, 0.5),
        normalize_std: Sequence[float] = (0.5, 0.5, 0.5),
        image_size: int = 224,
    ) -> None:
        super().__init__(model, normalize_mean, normalize_std, image_size, trainable=False)


def build_vit(
    model_id: str | None = "google/vit-base-patch16-224",
    config: Any = None,
    *,
    trainable: bool = False,
    normalize_mean: Sequence[float] = (0.5, 0.5, 0.5),
    normalize_std: Sequence[float] = (0.5, 0.5, 0.5),
    image_size: int | None = None,
    local_files_only: bool | None = None,
    seed: int | None = None,
) -> ViTEncoder:
    """A ViT encoder from a hub id / local folder, or from a ``ViTConfig`` (or a dict of its kwargs).

    A hub id that is not cached raises :class:`papers_shared.data.DatasetNotFoundError` when offline.
    ``image_size`` defaults to 224 for checkpoints and to the config's size for models from configs.
    ``seed`` seeds a config-built model's random weights without touching the global RNG.
    """
    from transformers import ViTConfig, ViTModel

    if config is not None:
        if isinstance(config, dict):
            config = ViTConfig(**config)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = ViTModel(config, add_pooling_layer=False)
        size = config.image_size if image_size is None else image_size
    else:
        if not model_id:
            raise ValueError("build_vit needs a model_id or a config")
        from papers_shared.data.errors import DatasetNotFoundError
        from papers_shared.mllm import resolve_model_path

        path = resolve_model_path(model_id, local_files_only)
        try:
            model = ViTModel.from_pretrained(path, add_pooling_layer=False)
        except OSError as exc:
            raise DatasetNotFoundError(
                f"ViT weights {model_id!r}",
                None,
                f"Could not load them ({str(exc)[:200]}). On a machine with internet run "
                f"`hf download {model_id}` and point HF_HOME at that cache, or pass a local folder.",
            ) from exc
        size = 224 if image_size is None else image_size
    return ViTEncoder(model, normalize_mean, normalize_std, size, trainable=trainable)


def pretrain_encoder(
    encoder: ViTEncoder,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 2,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> ViTEncoder:
    """Stand-in for ImageNet pre-training in the offline demo (ours): train the whole ViT with a
    throwaway linear head on mean-pooled tokens (CE, Adam) on ``(x, y)``, then freeze it again.

    Returns the same encoder, frozen (``trainable=False``, eval mode, no gradients).
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError("pretrain_encoder needs a non-empty (x, y) of equal length")
    num_classes = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(encoder.hidden_size, num_classes)
    device = encoder.mean.device
    head = head.to(device)
    encoder.vit.requires_grad_(True)
    encoder.vit.train()
    opt = torch.optim.Adam(list(encoder.vit.parameters()) + list(head.parameters()), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0], batch_size):
            idx = order[s : s + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            logits = head(encoder.vit(pixel_values=encoder.preprocess(xb)).last_hidden_state.mean(dim=1))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    encoder.trainable = False
    encoder.vit.requires_grad_(False)
    encoder.vit.eval()
    return encoder


def prepare_encoder(cfg, data, seed: int, device: torch.device) -> ViTEncoder:
    """The frozen ViT of a run: a checkpoint (``system1.vit``), or a model from ``system1.vit_config`` that
    is pre-trained on the stream's disjoint pre-training split when it has one (the digits demo; ours)."""
    s1 = cfg.system1
    enc = build_vit(
        None if s1.vit_config is not None else s1.vit,
        config=s1.vit_config,
        normalize_mean=s1.normalize_mean,
        normalize_std=s1.normalize_std,
        image_size=s1.image_size,
        seed=seed,
    ).to(device)
    if s1.vit_config is not None and data.pretrain is not None and cfg.data.pretrain_epochs > 0:
        pretrain_encoder(
            enc,
            *data.pretrain,
            epochs=cfg.data.pretrain_epochs,
            lr=cfg.data.pretrain_lr,
            batch_size=cfg.data.pretrain_batch_size,
            seed=seed,
        )
    return enc
