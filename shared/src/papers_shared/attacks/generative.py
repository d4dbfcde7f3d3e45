"""Generator-based attacks (TTP, ESMA, C-GSP style): one forward pass, smoothing, projection.

``x_adv = clip(min(max(S(G(x[, t])), x - eps), x + eps))`` with ``S`` the 3x3 Gaussian smoothing of
the TTP code (Naseer et al., ICCV 2021) that ESMA (Gao et al., NeurIPS 2023; gjq100/ESMA) reuses. The generator itself (TTP's ResNet generator, ESMA's
conditional UNet, ...) lives in the package that trains it; anything whose ``forward(x)`` or
``forward(x, target)`` returns images works here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_eps, check_images, check_labels
from .ops import generator_smoothing, project_generated

__all__ = ["GenerativeAttack"]


def _accepts_target(generator: nn.Module) -> bool:
    try:
        params = list(inspect.signature(generator.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    varargs = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params)
    return len(positional) >= 2 or varargs


class GenerativeAttack:
    """Wrap an image generator as a torchattacks-style attack.

    Args:
        generator: ``nn.Module`` whose ``forward(x)`` (unconditional, e.g. one TTP generator per
            target) or ``forward(x, target)`` (conditional, e.g. ESMA) returns images.
        eps: L-inf budget of the projection.
        smoothing: ``True`` for the TTP/ESMA 3x3 Gaussian (sigma 1), ``False``/``None`` for none, or any
            module / callable applied to the generator output.
        targeted: reported in ``self.targeted`` (generative targeted attacks are the common case).
        conditional: pass ``labels`` to the generator; ``None`` infers it from ``forward``'s signature.

    ``attack(images, labels=None)`` runs under ``torch.no_grad`` with the generator in eval mode and
    returns detached images; :meth:`perturb` is the differentiable version for training loops.
    Subclasses map user labels to generator inputs by overriding :meth:`map_labels`.
    """

    name = "generative"

    def __init__(
        self,
        generator: nn.Module,
        eps: float = 16 / 255,
        smoothing: bool | nn.Module | Callable[[Tensor], Tensor] | None = True,
        *,
        targeted: bool = True,
        conditional: bool | None = None,
    ) -> None:
        if not callable(generator):
            raise TypeError("generator must be an nn.Module or callable")
        self.generator = generator
        self.eps = check_eps(eps, "eps")
        if smoothing is True:
            self.smoothing: Callable[[Tensor], Tensor] | None = generator_smoothing(3, 1.0)
        elif smoothing is False or smoothing is None:
            self.smoothing = None
        elif callable(smoothing):
            self.smoothing = smoothing
        else:
            raise ValueError(f"smoothing must be a bool, None or a callable, got {smoothing!r}")
        self.targeted = bool(targeted)
        if conditional is None:
            conditional = isinstance(generator, nn.Module) and _accepts_target(generator)
        self.conditional = bool(conditional)

    def map_labels(self, labels: Tensor) -> Tensor:
        """Translate user labels into the generator's conditioning input (identity by default)."""
        return labels

    def _smooth(self, u: Tensor) -> Tensor:
        if self.smoothing is None:
            return u
        if isinstance(self.smoothing, nn.Module):
            self.smoothing.to(u.device)
        return self.smoothing(u)

    def perturb(self, images: Tensor, labels: Tensor | None = None, eps: float | None = None) -> Tensor:
        """Differentiable ``clip(Pi_eps(S(G(x[, t])); x))`` (no validation, no mode switching)."""
        eps = self.eps if eps is None else check_eps(eps, "eps")
        if self.conditional:
            if labels is None:
                raise ValueError("this generator is conditional: pass target labels")
            u = self.generator(images, self.map_labels(labels))
        else:
            u = self.generator(images)
        if not isinstance(u, Tensor) or u.shape != images.shape:
            shape = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(f"generator must return images of shape {tuple(images.shape)}, got {shape}")
        return project_generated(self._smooth(u), images, eps)

    def __call__(self, images: Tensor, labels: Tensor | int | None = None) -> Tensor:
        images = check_images(images)
        device = self._device(images.device)
        x = images.detach().to(device)
        y = None if labels is None else check_labels(labels, x.shape[0], device)
        if self.conditional and y is None:
            raise ValueError("this generator is conditional: pass target labels")
        gen = self.generator
        was_training = getattr(gen, "training", False)
        if isinstance(gen, nn.Module):
            gen.eval()
        try:
            with torch.no_grad():
                adv = self.perturb(x, y)
        finally:
            if isinstance(gen, nn.Module) and was_training:
                gen.train()
        return adv.detach().to(device=images.device, dtype=images.dtype)

    def _device(self, fallback: torch.device) -> torch.device:
        if isinstance(self.generator, nn.Module):
            for p in self.generator.parameters():
                return p.device
        return fallback

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "eps": self.eps, "steps": 1, "targeted": self.targeted}
