"""The small model of the Complementary Inference Module (paper: a small pre-trained model for fast
inference; ViT + LoRA form ours): a frozen ViT whose memory regions
are peft LoRA adapters (one per STM slot, one for the LTM).

peft is the memory substrate: ``add_adapter`` per task, ``set_adapter`` to read one region,
``add_weighted_adapter(..., "cat" | "svd")`` for exact merges and ``delete_adapter`` to free slots.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from papers_shared.data.errors import DatasetNotFoundError
from sr_cis.config import LoraSpec, SmallModelConfig

__all__ = ["SmallModel", "build_small_model", "check_images", "resolve_targets"]

#: transformers >= 5 names ViT attention projections ``q_proj``/``k_proj``/``v_proj`` (4.x: ``query``...).
TARGET_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "q_proj": "query", "v_proj": "value"}


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Target names (``query``, ``value``) mapped to the names this transformers version uses."""
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    out = []
    for t in targets:
        if t in leaves:
            out.append(t)
        elif TARGET_ALIASES.get(t) in leaves:
            out.append(TARGET_ALIASES[t])
        else:
            raise ValueError(f"LoRA target {t!r} matches no Linear module; available: {sorted(leaves)}")
    return out


def check_images(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Raise a clear error unless ``x`` is a finite float ``[B, channels, size, size]`` batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"images must have shape [B, {channels}, {size}, {size}], got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"images must be float in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    return x


class SmallModel(nn.Module):
    """Frozen ViT + named LoRA adapters; ``features(x, adapter)`` is the CLS feature ``h_r(x)``.

    ``adapter=None`` reads the frozen backbone (all adapters disabled).
    """

    def __init__(
        self,
        backbone: nn.Module,
        lora: LoraSpec | None = None,
        feature: str = "cls",
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        if feature not in ("cls", "mean"):
            raise ValueError(f"feature must be 'cls' or 'mean', got {feature!r}")
        self.lora = lora or LoraSpec()
        self.feature = feature
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        cfg = backbone.config
        self.image_size = int(cfg.image_size)
        self.num_channels = int(cfg.num_channels)
        self.dim = int(cfg.hidden_size)
        if len(image_mean) != self.num_channels or len(image_std) != self.num_channels:
            raise ValueError("image_mean/image_std need one value per input channel")
        self.register_buffer("mean", torch.tensor(list(image_mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(image_std)).view(1, -1, 1, 1), persistent=False)
        self.targets = resolve_targets(backbone, self.lora.targets)
        self.peft: nn.Module | None = None
        self.adapter_ranks: dict[str, tuple[int, float]] = {}
        self.trainable_adapter: str | None = None

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> list[str]:
        return list(self.adapter_ranks)

    def _lora_config(self, r: int, alpha: float):
        from peft import LoraConfig

        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=list(self.targets),
            lora_dropout=self.lora.dropout,
            bias="none",
            init_lora_weights=True,  # B = 0: a fresh adapter is the identity
        )

    def add_task_adapter(
        self, name: str, r: int | None = None, alpha: float | None = None, seed: int | None = None
    ) -> None:
        """A fresh LoRA (``B = 0``) named ``name``; it becomes the active, only trainable adapter.

        ``seed`` fixes the random ``A`` (otherwise drawn from the global generator)."""
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.add_task_adapter(name, r, alpha)
            return
        if not isinstance(name, str) or not name:
            raise ValueError("adapter name must be a non-empty string")
        if name in self.adapter_ranks:
            raise ValueError(f"adapter {name!r} already exists; adapters: {self.adapters}")
        r = self.lora.r if r is None else int(r)
        alpha = self.lora.alpha if alpha is None else float(alpha)
        cfg = self._lora_config(r, alpha)
        if self.peft is None:
            from peft import get_peft_model

            self.peft = get_peft_model(self.backbone, cfg, adapter_name=name)
        else:
            self.peft.add_adapter(name, cfg)
        self.adapter_ranks[name] = (r, alpha)
        self.set_adapter(name)

    def set_adapter(self, name: str) -> None:
        """Activate ``name``; only its LoRA parameters require grad (peft semantics)."""
        self._require(name)
        self.peft.set_adapter(name)
        self.trainable_adapter = name
        self._apply_trainable()

    def _apply_trainable(self) -> None:
        name = self.trainable_adapter
        for n, p in self.peft.named_parameters():
            p.requires_grad_(name is not None and "lora_" in n and f".{name}." in n)

    def freeze_all(self) -> None:
        """No parameter requires grad (inference / a frozen memory)."""
        self.trainable_adapter = None
        for p in self.parameters():
            p.requires_grad_(False)

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        if len(self.adapter_ranks) == 1:
            raise ValueError("cannot delete the last adapter; add the merged LTM adapter first")
        self.peft.delete_adapter(name)
        del self.adapter_ranks[name]
        self.freeze_all()

    def _require(self, name: str) -> None:
        if name not in self.adapter_ranks:
            raise KeyError(f"unknown adapter {name!r}; adapters: {self.adapters}")

    def merge_adapters(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        new_name: str,
        combination: str = "cat",
        svd_rank: int | None = None,
    ) -> None:
        """``ΔW_new = Σ_i w_i ΔW_i`` exactly (peft ``cat``), or its best rank-``svd_rank`` approximation
        (peft ``svd``; exact when ``svd_rank >= Σ r_i``). The restructuring's merge (ours)."""
        if combination not in ("cat", "svd"):
            raise ValueError(f"combination must be 'cat' or 'svd' (exact merges), got {combination!r}")
        if len(names) == 0 or len(names) != len(weights):
            raise ValueError("need one weight per adapter and at least one adapter")
        for n in names:
            self._require(n)
        if new_name in self.adapter_ranks:
            raise ValueError(f"adapter {new_name!r} already exists")
        if len(names) == 1:
            # peft switches a one-adapter merge to factor-wise "linear"; do the exact copy ourselves.
            r, alpha = self.adapter_ranks[names[0]]
            self.add_task_adapter(new_name, r=r, alpha=alpha)
            src = names[0]
            with torch.no_grad():
                for mod in self._lora_layers():
                    mod.lora_A[new_name].weight.copy_(mod.lora_A[src].weight)
                    mod.lora_B[new_name].weight.copy_(mod.lora_B[src].weight * float(weights[0]))
        else:
            kw = {"svd_rank": svd_rank} if combination == "svd" else {}
            self.peft.add_weighted_adapter(
                adapters=list(names),
                weights=[float(w) for w in weights],
                adapter_name=new_name,
                combination_type=combination,
                **kw,
            )
            cfg = self.peft.peft_config[new_name]
            self.adapter_ranks[new_name] = (int(cfg.r), float(cfg.lora_alpha))
        self.set_adapter(new_name)

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        if self.peft is None:
            return []
        return [m for m in self.peft.modules() if isinstance(m, LoraLayer)]

    def delta_weights(self, name: str) -> dict[str, torch.Tensor]:
        """``{module path: s B A}`` of adapter ``name`` (for checks and storage)."""
        self._require(name)
        out = {}
        for path, m in self.peft.named_modules():
            if hasattr(m, "lora_A") and name in getattr(m, "lora_A", {}):
                out[path] = m.get_delta_weight(name).detach().clone()
        return out

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """The LoRA tensors of one adapter (keys without the adapter name)."""
        self._require(name)
        out = {}
        for k, v in self.peft.state_dict().items():
            if "lora_" in k and f".{name}." in k:
                out[k.replace(f".{name}.", ".")] = v.detach().clone()
        return out

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        self._require(name)
        own = {k.replace(f".{name}.", "."): k for k in self.peft.state_dict() if f".{name}." in k}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"adapter {name!r} state mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        full = {own[k]: v for k, v in state.items()}
        self.peft.load_state_dict(full, strict=False)

    @torch.no_grad()
    def relative_delta(self, name: str) -> float:
        """``sum ||s B A||_F / sum ||W||_F`` over the adapted projections: how far the LoRA of ``name`` moved
        the frozen weights (0 for a fresh adapter)."""
        num = den = 0.0
        for m in self.peft.modules():
            if hasattr(m, "lora_A") and name in getattr(m, "lora_A", {}):
                num += float(m.get_delta_weight(name).float().norm())
                den += float(m.get_base_layer().weight.float().norm())
        if den == 0.0:
            raise KeyError(f"adapter {name!r} adapts no layer")
        return num / den

    def adapter_bytes(self, name: str) -> int:
        return sum(v.numel() * v.element_size() for v in self.adapter_state(name).values())

    # ------------------------------------------------------------------ features
    def features(self, x: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        """``h_r(x)``: CLS token (or token mean) after the final LayerNorm, ``[B, d]``."""
        check_images(x, self.num_channels, self.image_size)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if adapter is None:
            if self.peft is None:
                out = self.backbone(pixel_values=x)
            else:
                with self.peft.disable_adapter():
                    out = self.peft(pixel_values=x)
        else:
            self._require(adapter)
            if self.peft.active_adapter != adapter:
                self.peft.set_adapter(adapter)  # peft marks it trainable; restore the training intent
                self._apply_trainable()
            out = self.peft(pixel_values=x)
        hs = out.last_hidden_state
        return hs[:, 0] if self.feature == "cls" else hs[:, 1:].mean(1)

    def trainable_parameters(self, adapter: str) -> list[nn.Parameter]:
        self._require(adapter)
        return [p for n, p in self.peft.named_parameters() if "lora_" in n and f".{adapter}." in n]


def build_small_model(cfg: SmallModelConfig | None = None) -> SmallModel:
    """A frozen ViT from a hub id / local folder (``cfg.model_id``) or, with ``model_id=None``, a random
    tiny ViT from ``cfg.tiny`` (offline). Raises :class:`DatasetNotFoundError` when the weights are absent."""
    from transformers import ViTConfig, ViTModel

    cfg = cfg or SmallModelConfig()
    if cfg.model_id is None:
        t = cfg.tiny
        vit_cfg = ViTConfig(
            image_size=t.image_size,
            patch_size=t.patch_size,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            intermediate_size=t.intermediate_size,
            num_channels=t.num_channels,
        )
        backbone = ViTModel(vit_cfg, add_pooling_layer=False)
    else:
        from papers_shared.mllm import resolve_model_path

        path = resolve_model_path(cfg.model_id)
        try:
            backbone = ViTModel.from_pretrained(path, add_pooling_layer=False)
        except OSError as exc:
            raise DatasetNotFoundError(
                f"HF hub model {os.fspath(cfg.model_id)!r}",
                None,
                f"Could not load it ({str(exc)[:200]}). On a machine with internet run "
                f"`hf download {cfg.model_id}` and point HF_HOME at that cache, or pass a local folder.",
            ) from exc
    backbone.eval()
    return SmallModel(backbone, cfg.lora, cfg.feature, cfg.image_mean, cfg.image_std)
