"""Surrogate and victim models of a run: the ImageNet registry, the ensemble, the offline digits models,
and local weight files.

* ImageNet models come from :func:`papers_shared.attacks.load_model` (public torchvision/timm weights,
  from the local cache unless ``download=true``); ``"ensemble"`` is the
  :class:`~papers_shared.attacks.NormalizedLogitEnsemble` of ``ensemble_members``
  (``transfer.py:EnsembleModel`` of the official code, commit 6866b7a).
* The digits models (ours) are trained here by :func:`ibta.trainer.train_classifier`: surrogate
  ``digits_cnn`` (:func:`small_cnn`, width 16, seed 0); victims ``digits_cnn_wide`` (width 24, seed 1),
  ``digits_mlp`` (seed 2) and ``digits_ens`` (ensemble of two small CNNs, seeds 3 and 4).
* ``weights: {name: file}`` replaces a model's weights by a local file (the official code evaluates its
  own fine-tuned checkpoints). A file is a safetensors file or a ``torch.save``\\ d state dict, read
  without running code (:func:`papers_shared.checkpoints.load_checkpoint`, ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from papers_shared.attacks import NormalizedLogitEnsemble, load_model, tiny_mlp
from papers_shared.checkpoints import load_checkpoint, load_safetensors
from papers_shared.errors import CheckpointError

from .config import DIGITS_MODELS, DigitsConfig, ExperimentConfig
from .trainer import train_classifier

__all__ = [
    "DIGITS_MODELS",
    "build_digits_model",
    "build_model",
    "load_weights",
    "read_weights",
    "small_cnn",
]


def small_cnn(num_classes: int = 10, width: int = 16, size: int = 16, seed: int | None = None) -> nn.Module:
    """Two conv-ReLU-maxpool blocks and a linear head on ``size x size`` RGB images (ours).

    (The shared ``tiny_cnn`` ends in global average pooling and reaches only ~72% on digits.)
    """
    if size % 4 != 0:
        raise ValueError(f"size must be a multiple of 4, got {size}")

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, num_classes),
        )

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _digits_arch(name: str, cfg: DigitsConfig) -> tuple[nn.Module | list[nn.Module], list[int]]:
    if name == "digits_cnn":
        return small_cnn(10, 16, cfg.size, seed=0), [0]
    if name == "digits_cnn_wide":
        return small_cnn(10, 24, cfg.size, seed=1), [1]
    if name == "digits_mlp":
        return tiny_mlp((3, cfg.size, cfg.size), 10, hidden=128, seed=2), [2]
    if name == "digits_ens":
        return [small_cnn(10, 16, cfg.size, seed=s) for s in (3, 4)], [3, 4]
    raise ValueError(f"unknown digits model {name!r}; choose one of {list(DIGITS_MODELS)}")


def build_digits_model(
    name: str,
    data: dict | None = None,
    cfg: DigitsConfig | None = None,
    epochs: int | None = None,
    state: dict[str, Tensor] | None = None,
) -> nn.Module:
    """Digits model ``name`` (one of :data:`DIGITS_MODELS`): trained on the training split, or ``state``."""
    from .data import digits_data

    cfg = cfg or DigitsConfig()
    arch, seeds = _digits_arch(name, cfg)
    if state is None:
        data = data or digits_data(cfg)
        x, y = data["train"]
        ep = cfg.epochs if epochs is None else epochs
        members = arch if isinstance(arch, list) else [arch]
        members = [train_classifier(m, x, y, ep, cfg.lr, cfg.batch_size, s) for m, s in zip(members, seeds)]
        arch = members if isinstance(arch, list) else members[0]
    model = NormalizedLogitEnsemble(arch) if isinstance(arch, list) else arch
    if state is not None:
        _load_state(model, state, name)
    return model.eval().requires_grad_(False)


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """A model state dict from a safetensors file or a ``torch.save`` file, read without running code.

    Accepts a plain state dict or one under a ``"state_dict"`` / ``"model"`` key; a ``module.`` prefix
    (DataParallel) is dropped. A damaged, foreign or refused file raises :class:`CheckpointError`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, _ = load_safetensors(path)
    else:
        state = load_checkpoint(path)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no model state dict (a mapping of parameter names to tensors); save "
            "model.state_dict() with torch.save or as safetensors"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_weights(cfg: ExperimentConfig) -> dict[str, tuple[Path, dict[str, Tensor]]]:
    """Every file of ``cfg.weights``, read before any model is built or trained (a bad file fails at once)."""
    return {name: (Path(path), load_weights(path)) for name, path in cfg.weights.items()}


def _load_state(model: nn.Module, state: dict[str, Tensor], name: str, path: Path | None = None) -> None:
    target = getattr(model, "model", model)  # an ImageNetWrapper holds the network as .model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        where = f"{path} " if path is not None else ""
        raise CheckpointError(f"weights {where}do not fit model {name!r}: {detail}") from None


def build_model(
    name: str,
    cfg: ExperimentConfig,
    device: torch.device,
    cache: dict[str, nn.Module],
    weights: dict[str, tuple[Path, dict[str, Tensor]]] | None = None,
    digits: dict | None = None,
) -> nn.Module:
    """A source/victim model by name (registry, ``"ensemble"`` or a digits model), built once per run.

    ``weights`` (from :func:`read_weights`) replaces the named models' weights; ``digits`` is the
    digits data (train split) for the digits models.
    """
    if name in cache:
        return cache[name]
    weights = weights or {}
    path, state = weights.get(name, (None, None))
    if cfg.dataset == "digits":
        try:
            model = build_digits_model(name, digits, cfg.digits, state=state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        model.weights_source = str(path) if path else "trained here on sklearn digits"  # type: ignore[assignment]
        model.preprocessing = "none"  # type: ignore[assignment]
    elif name == "ensemble":
        members = [build_model(m, cfg, device, cache, weights) for m in cfg.ensemble_members]
        model = NormalizedLogitEnsemble(members)
        model.weights_source = "+".join(str(getattr(m, "weights_source", "?")) for m in members)  # type: ignore[assignment]
        model.preprocessing = cfg.preprocessing  # type: ignore[assignment]
    else:
        try:
            model = load_model(
                name,
                pretrained=cfg.pretrained and state is None,
                preprocessing=cfg.preprocessing,
                device=device,
                download=cfg.download,
            )
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"pretrained weights for {name!r} are not in the local cache and download=false: {err}. "
                "Run once with download=true on a machine with internet (or pre-populate the torch/timm "
                "cache), or give a local file with weights.<model>=<file>."
            ) from err
        if state is not None:
            _load_state(model, state, name, path)
            model.weights_source = str(path)  # type: ignore[assignment]
    model = model.to(device).eval()
    cache[name] = model
    return model
