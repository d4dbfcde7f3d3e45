"""Classifier wrappers, a registry of ImageNet models, logit ensembles and tiny test models.

Every model handed to an attack takes images in [0, 1]; :class:`ImageNetWrapper` adds the
resize + normalisation that the underlying network expects. :func:`load_model` builds the models
used by the ESMA / IBTA experiments from torchvision or timm (timm is the optional extra
``papers-shared[attacks]``) and never downloads when ``download=False``.

Preprocessing modes (the ESMA and IBTA official codes feed every model 224x224 with ImageNet mean/std):

* ``"native"`` -- each model's own statistics and input size (timm ``pretrained_cfg``; torchvision
  ImageNet mean/std at the incoming resolution); Inception models get 299x299 inside the wrapper;
* ``"paper"`` -- what the official ESMA / IBTA code does for every model: 224x224 input with the
  ImageNet mean/std, including the Inception and ViT models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_REGISTRY",
    "ImageNetWrapper",
    "MeanLogitEnsemble",
    "ModelSpec",
    "NormalizedLogitEnsemble",
    "load_model",
    "tiny_cnn",
    "tiny_mlp",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("native", "paper")


class ImageNetWrapper(nn.Module):
    """Wrap a classifier so it takes [0, 1] images: optional resize, then ``(x - mean) / std``.

    Args:
        model: the network, fed normalised images.
        mean, std: per-channel statistics.
        input_size: resize every input to this size (int or (H, W)) with differentiable
            interpolation; ``None`` keeps the incoming size.
        interpolation: ``F.interpolate`` mode for the resize.
        name, weights_source, preprocessing: metadata recorded in result rows.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_size: int | tuple[int, int] | None = None,
        interpolation: str = "bilinear",
        *,
        name: str | None = None,
        weights_source: str = "unknown",
        preprocessing: str = "custom",
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if mean_t.shape != std_t.shape:
            raise ValueError("mean and std must have the same length")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.model = model
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.interpolation = interpolation
        self.name = name or type(model).__name__
        self.weights_source = weights_source
        self.preprocessing = preprocessing

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected (N, {self.mean.shape[1]}, H, W) images, got {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            align = None if self.interpolation in ("nearest", "area", "nearest-exact") else False
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, align_corners=align)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, preprocessing={self.preprocessing!r}, "
            f"weights_source={self.weights_source!r}"
        )


# --------------------------------------------------------------------------------------------
# ensembles
# --------------------------------------------------------------------------------------------


class _Ensemble(nn.Module):
    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = nn.ModuleList(models)
        names = [getattr(m, "name", type(m).__name__) for m in models]
        self.name = f"{type(self).__name__}({', '.join(names)})"
        self.weights_source = "; ".join(str(getattr(m, "weights_source", "unknown")) for m in models)
        self.preprocessing = "; ".join(str(getattr(m, "preprocessing", "unknown")) for m in models)

    def member_logits(self, x: Tensor) -> list[Tensor]:
        outs = [m(x) for m in self.models]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members return different logit shapes: {sorted(shapes)}")
        return outs


class MeanLogitEnsemble(_Ensemble):
    """Average of the members' logits."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.member_logits(x)).mean(dim=0)


class NormalizedLogitEnsemble(_Ensemble):
    """IBTA-code ensemble: ``mean_i(z_i / ||z_i||) * mean_i ||z_i||`` per sample, norms detached.

    ``||z_i||`` is the L2 norm over classes of member ``i``'s logits for each sample; both the
    normalisers and the rescaling factor are treated as constants for the gradient (``transfer.py:EnsembleModel.forward`` of the IBTA official
    code, commit 6866b7a).
    """

    def forward(self, x: Tensor) -> Tensor:
        outs = self.member_logits(x)
        norms = [o.detach().norm(p=2, dim=1, keepdim=True) for o in outs]
        tiny = torch.finfo(outs[0].dtype).tiny
        normalized = torch.stack([o / n.clamp_min(tiny) for o, n in zip(outs, norms)]).mean(dim=0)
        scale = torch.cat(norms, dim=1).mean(dim=1, keepdim=True)
        return normalized * scale


# --------------------------------------------------------------------------------------------
# registry and loader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Where a registry model comes from.

    ``source`` is ``"torchvision"`` or ``"timm"``; ``arch`` the constructor name; ``weights`` the
    torchvision weight enum name (e.g. ``"IMAGENET1K_V1"``) or the timm pretrained tag.
    """

    source: str
    arch: str
    weights: str


MODEL_REGISTRY: dict[str, ModelSpec] = {
    "resnet50": ModelSpec("torchvision", "resnet50", "IMAGENET1K_V1"),
    "resnet152": ModelSpec("torchvision", "resnet152", "IMAGENET1K_V1"),
    "vgg16": ModelSpec("torchvision", "vgg16", "IMAGENET1K_V1"),
    "vgg19_bn": ModelSpec("torchvision", "vgg19_bn", "IMAGENET1K_V1"),
    "densenet121": ModelSpec("torchvision", "densenet121", "IMAGENET1K_V1"),
    "inception_v3": ModelSpec("timm", "inception_v3", "tf_in1k"),
    "inception_v4": ModelSpec("timm", "inception_v4", "tf_in1k"),
    "inception_resnet_v2": ModelSpec("timm", "inception_resnet_v2", "tf_in1k"),
    "adv_inception_v3": ModelSpec("timm", "inception_v3", "tf_adv_in1k"),
    "ens_adv_inception_resnet_v2": ModelSpec("timm", "inception_resnet_v2", "tf_ens_adv_in1k"),
    "vit_base_patch16_224": ModelSpec("timm", "vit_base_patch16_224", "augreg_in1k"),
}


def _resolve_spec(name: str, weights: str | None) -> ModelSpec:
    if name in MODEL_REGISTRY:
        spec = MODEL_REGISTRY[name]
    elif name.startswith("timm:"):
        arch, _, tag = name[len("timm:") :].partition(".")
        spec = ModelSpec("timm", arch, tag)
    elif name.startswith("torchvision:"):
        spec = ModelSpec("torchvision", name[len("torchvision:") :], "DEFAULT")
    else:
        raise ValueError(
            f"unknown model {name!r}; registry names: {sorted(MODEL_REGISTRY)}; or use "
            "'timm:<arch>.<tag>' / 'torchvision:<arch>'"
        )
    if weights is not None:
        spec = ModelSpec(spec.source, spec.arch, weights)
    return spec


def _weights_help(name: str, where: str) -> str:
    return (
        f"Pretrained weights for model {name!r} are not available offline ({where}). Pre-download them "
        "on a machine with network access into the same cache (torch hub dir / TORCH_HOME for "
        "torchvision, the Hugging Face cache / HF_HOME for timm), or pass pretrained=False for "
        "random weights."
    )


def _build_torchvision(name: str, spec: ModelSpec, pretrained: bool, download: bool) -> tuple[nn.Module, str]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(spec.arch)
    except ValueError as err:
        raise ValueError(f"torchvision has no model {spec.arch!r} (requested {name!r})") from err
    if not pretrained:
        return builder(weights=None), "random-init"
    weights_enum = torchvision.models.get_model_weights(spec.arch)
    try:
        weights = weights_enum[spec.weights] if spec.weights != "DEFAULT" else weights_enum.DEFAULT
    except KeyError as err:
        raise ValueError(
            f"torchvision model {spec.arch!r} has no weights {spec.weights!r}; "
            f"available: {[w.name for w in weights_enum]}"
        ) from err
    filename = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.exists(cached) and not download:
        raise FileNotFoundError(_weights_help(name, f"expected {filename} in the torch hub cache"))
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError, ...)
        raise RuntimeError(_weights_help(name, f"download of {weights.url} failed: {err}")) from err
    model = builder(weights=None)
    model.load_state_dict(state)
    return model, f"torchvision:{type(weights).__name__}.{weights.name}"


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "timm models need the optional extra: pip install 'papers-shared[attacks]' (or pip install timm)"
        ) from err
    return timm


def _cached_timm_file(hf_hub_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(path, str) and os.path.exists(path):
            return path
    return None


def _build_timm(
    name: str, spec: ModelSpec, pretrained: bool, download: bool
) -> tuple[nn.Module, dict[str, Any], str]:
    timm = _import_timm()
    full = f"{spec.arch}.{spec.weights}" if spec.weights else spec.arch
    try:
        model = timm.create_model(full, pretrained=False)
    except RuntimeError as err:
        raise ValueError(f"timm has no model {full!r} (requested {name!r})") from err
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    if not pretrained:
        return model, cfg, "random-init"
    hub_id = cfg.get("hf_hub_id") or ""
    cached = _cached_timm_file(hub_id) if hub_id else None
    if cached is None and not download:
        raise FileNotFoundError(_weights_help(name, f"{hub_id or full} is not in the Hugging Face cache"))
    try:
        if cached is not None:
            model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay={"file": cached})
        else:
            model = timm.create_model(full, pretrained=True)
    except Exception as err:  # hub / network / file errors
        raise RuntimeError(_weights_help(name, f"loading {full} failed: {err}")) from err
    return model, cfg, f"timm:{full}"


def load_model(
    name: str,
    pretrained: bool = True,
    preprocessing: str = "native",
    device: str | torch.device = "cpu",
    *,
    weights: str | None = None,
    download: bool = True,
    freeze: bool = True,
) -> ImageNetWrapper:
    """Build a registry model wrapped to take [0, 1] images, in eval mode.

    Args:
        name: a :data:`MODEL_REGISTRY` key, ``"timm:<arch>.<tag>"`` or ``"torchvision:<arch>"``.
        pretrained: load the public ImageNet weights (from the local cache when present).
        preprocessing: ``"native"`` or ``"paper"`` (see the module docstring).
        device: where to put the model.
        weights: override the weight version (torchvision enum name such as ``"IMAGENET1K_V2"``,
            or a timm tag); results depend on it, so it is recorded in ``weights_source``.
        download: when False, raise :class:`FileNotFoundError` instead of downloading missing weights.
            Download failures raise :class:`RuntimeError` naming the model and how to get the weights.
        freeze: set ``requires_grad=False`` on the parameters (attacks only need input gradients).
    """
    if preprocessing not in PREPROCESSING_MODES:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING_MODES}, got {preprocessing!r}")
    spec = _resolve_spec(name, weights)
    if spec.source == "torchvision":
        net, source = _build_torchvision(name, spec, pretrained, download)
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, None
    else:
        net, cfg, source = _build_timm(name, spec, pretrained, download)
        mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        std = tuple(cfg.get("std", IMAGENET_STD))
        in_size = cfg.get("input_size")
        size = tuple(in_size[1:]) if in_size else None
    if preprocessing == "paper":
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, (224, 224)
    wrapper = ImageNetWrapper(
        net, mean, std, size, name=name, weights_source=source, preprocessing=preprocessing
    )
    if freeze:
        wrapper.requires_grad_(False)
    return wrapper.to(device).eval()


# --------------------------------------------------------------------------------------------
# tiny models for tests and demos
# --------------------------------------------------------------------------------------------


def _seeded_build(seed: int | None, build: Any) -> nn.Module:
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_cnn(
    num_classes: int = 10, in_channels: int = 3, width: int = 16, seed: int | None = None
) -> nn.Module:
    """Small conv net (3 conv layers, global average pooling, linear head) for any input size >= 4.

    Takes [0, 1] images directly (no normalisation needed). ``seed`` fixes the initialisation without
    touching the global RNG.
    """
    if num_classes < 1 or in_channels < 1 or width < 1:
        raise ValueError("num_classes, in_channels and width must be positive")

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, num_classes),
        )

    return _seeded_build(seed, build)


def tiny_mlp(
    input_shape: Sequence[int] = (3, 16, 16),
    num_classes: int = 10,
    hidden: int = 64,
    seed: int | None = None,
) -> nn.Module:
    """Flatten + two-layer MLP with ReLU for inputs of shape ``input_shape``."""
    if num_classes < 1 or hidden < 1:
        raise ValueError("num_classes and hidden must be positive")
    in_features = 1
    for d in input_shape:
        in_features *= int(d)

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    return _seeded_build(seed, build)
