"""Iterative gradient attacks with overridable hooks, and the common transfer-attack presets.

One loop serves every attack (spec "Shared package contract", ibta §3.4, esma §3.7)::

    delta = init_delta(x)                      # zeros, or a random start
    m = None
    for step in range(steps):
        g = gradient(x, delta, labels)         # averaged over `passes`, each pass:
            x_adv = perturb(x, delta)          #   x + delta (clamped to [0, 1] when needed)
            x_in  = transform(x_adv)           #   DI / SI / Admix / spectrum copies ...
            z     = forward(x_in)              #   model logits
            J     = objective(z, labels, x_in) #   signed so that the attack always ascends J
            g     = dJ / d delta
        g = grad_transform(g)                  # TI smoothing, then L1-mean normalisation (MI)
        m = accumulate(m, g)                   # momentum (MI) or g itself
        delta = update(delta, m)               # delta + alpha * sign(m)   (L2: alpha * m / ||m||)
        delta = project(delta, x)              # eps-ball (and [0, 1] for x + delta)
    return clip(x + delta)

Subclasses override the hooks; the per-call state (clean images, labels, step index, momentum,
random generator, free-form ``extra`` dict) lives in ``self.state`` during a call, and
:meth:`IterativeAttack.setup` runs once per call before the first step.

Call convention (torchattacks): ``adv = attack(images, labels)``; with ``targeted=True`` the labels
are the target ids. The result is a detached image tensor with the input's shape, dtype and device;
the inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import losses as L
from ._checks import check_eps, check_images, check_labels, draw_normal, draw_uniform
from .ops import (
    admix,
    gaussian_kernel,
    input_diversity,
    l1_mean_normalize,
    momentum_update,
    project_l2,
    scale_copies,
    spectrum_transform,
    ti_smooth,
)

__all__ = [
    "RAP",
    "SSA",
    "TIFGSM",
    "Admix",
    "AttackState",
    "DIFGSM",
    "IFGSM",
    "IterativeAttack",
    "LogitAttack",
    "MIFGSM",
    "PRESETS",
    "PoTrip",
    "RAPIBTA",
    "SINIFGSM",
    "VMIFGSM",
    "create_attack",
    "presets",
    "register_preset",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class AttackState:
    """Per-call state visible to the hooks as ``self.state``.

    ``delta`` is the perturbation leaf that the current gradient is taken against (it requires
    grad inside :meth:`IterativeAttack.gradient`), so an overridden ``objective`` can build extra
    branches such as ``perturb(x_other, self.state.delta)`` whose gradient reaches ``delta``.
    ``momentum`` is the buffer after the previous step (``None`` before the first step).
    """

    x: Tensor
    labels: Tensor
    generator: torch.Generator | None
    true_labels: Tensor | None = None
    step: int = 0
    pass_index: int = 0
    momentum: Tensor | None = None
    delta: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def repeat_labels(labels: Tensor, n: int) -> Tensor:
    """Repeat ``labels`` (length B) to length ``n`` when a transform stacked ``n / B`` copies."""
    b = labels.shape[0]
    if n == b:
        return labels
    if b == 0 or n % b != 0:
        raise ValueError(f"model returned {n} rows for a batch of {b}; transforms must stack whole copies")
    return labels.repeat(n // b)


class IterativeAttack:
    """Iterative sign-gradient attack (I-FGSM / MI-FGSM family) with DI / TI switches and hooks.

    Args:
        model: classifier taking [0, 1] images (wrap it with :class:`ImageNetWrapper` if needed).
        eps: perturbation budget (L-inf, or L2 radius when ``norm="l2"``).
        alpha: step size.
        steps: number of iterations.
        targeted: if True, ``labels`` are target ids and the loss is minimised.
        loss: ``"ce"``, ``"logit"``, ``"po_trip"`` or a callable ``loss(logits, labels) -> scalar``
            (lower = closer to ``labels``; e.g. ESMA's easy-sample matching loss).
        di: apply input diversity (Xie et al., CVPR 2019) before every forward pass.
        ti: smooth the gradient with a Gaussian kernel (Dong et al., CVPR 2019).
        mi: accumulate momentum over L1-mean-normalised gradients (Dong et al., CVPR 2018).
        decay: momentum decay ``mu``.
        random_start: start from a uniform point in the eps-ball (L2: random direction and radius).
        norm: ``"linf"`` (sign steps) or ``"l2"`` (normalised-gradient steps).
        diversity_prob, resize_rate, diversity_mode: DI parameters (probability, resize rate,
            interpolation mode).
        ti_kernel: TI kernel size (int) or an explicit ``(C, 1, k, k)`` kernel tensor.
        ti_nsig: TI kernel extent in standard deviations.
        normalize_grad: divide the gradient by its per-sample mean absolute value before
            accumulation; ``None`` means ``mi``.
        clip_delta: keep ``x + delta`` in [0, 1] after every step (torchattacks convention). With
            False, ``delta`` is only eps-bounded and the forward pass uses ``clip(x + delta)``, the
            gradient flowing through the clamp (IBTA official code, spec ibta §3.4).
        passes: forward/backward passes per step whose gradients are averaged (weighted by the
            number of copies each pass stacks).
        normalize_per_pass: L1-mean-normalise each pass's gradient before averaging.
        generator: ``torch.Generator`` for every random draw (advanced across calls).
        seed: if given, each call uses a fresh generator seeded with it (repeatable calls).
        model_mode: ``"eval"`` puts the model in eval mode during the attack (restored afterwards);
            ``"keep"`` leaves it as it is.
    """

    name = "iterative"
    reference = "I-FGSM / MI-FGSM family"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        targeted: bool = False,
        loss: str | LossFn = "ce",
        di: bool = False,
        ti: bool = False,
        mi: bool = True,
        decay: float = 1.0,
        *,
        random_start: bool = False,
        norm: str = "linf",
        diversity_prob: float = 0.7,
        resize_rate: float = 0.9,
        diversity_mode: str = "bilinear",
        ti_kernel: int | Tensor = 5,
        ti_nsig: float = 3.0,
        normalize_grad: bool | None = None,
        clip_delta: bool = True,
        passes: int = 1,
        normalize_per_pass: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        model_mode: str = "eval",
    ) -> None:
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError("model must be an nn.Module or a callable returning logits")
        self.model = model
        self.eps = check_eps(eps, "eps")
        self.alpha = check_eps(alpha, "alpha")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.steps = int(steps)
        self.targeted = bool(targeted)
        if isinstance(loss, str):
            self.loss_fn: LossFn = L.get_loss(loss)
            self.loss_name = loss
        elif callable(loss):
            self.loss_fn = loss
            self.loss_name = getattr(loss, "__name__", type(loss).__name__)
        else:
            raise ValueError(f"loss must be a name {sorted(L.LOSSES)} or a callable, got {loss!r}")
        self.di = bool(di)
        self.ti = bool(ti)
        self.mi = bool(mi)
        if not math.isfinite(decay):
            raise ValueError(f"decay must be finite, got {decay!r}")
        self.decay = float(decay)
        self.random_start = bool(random_start)
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.norm = norm
        if not 0.0 <= diversity_prob <= 1.0:
            raise ValueError(f"diversity_prob must be in [0, 1], got {diversity_prob!r}")
        if not math.isfinite(resize_rate) or resize_rate <= 0:
            raise ValueError(f"resize_rate must be > 0, got {resize_rate!r}")
        self.diversity_prob = float(diversity_prob)
        self.resize_rate = float(resize_rate)
        self.diversity_mode = diversity_mode
        self.po_trip_kwargs: dict[str, Any] = {}
        if isinstance(ti_kernel, Tensor):
            if ti_kernel.ndim != 4 or ti_kernel.shape[1] != 1:
                raise ValueError(
                    f"ti_kernel tensor must have shape (C, 1, k, k), got {tuple(ti_kernel.shape)}"
                )
            self.kernel = ti_kernel.detach().float()
        else:
            self.kernel = gaussian_kernel(int(ti_kernel), ti_nsig)
        self.ti_nsig = float(ti_nsig)
        self.normalize_grad = self.mi if normalize_grad is None else bool(normalize_grad)
        self.clip_delta = bool(clip_delta)
        if int(passes) != passes or passes < 1:
            raise ValueError(f"passes must be a positive integer, got {passes!r}")
        self.passes = int(passes)
        self.normalize_per_pass = bool(normalize_per_pass)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator")
        self.generator = generator
        self.seed = seed
        if model_mode not in ("eval", "keep"):
            raise ValueError(f"model_mode must be 'eval' or 'keep', got {model_mode!r}")
        self.model_mode = model_mode
        self.state: AttackState | None = None

    # ------------------------------------------------------------------ public call
    def __call__(self, images: Tensor, labels: Tensor | int, *, true_labels: Tensor | None = None) -> Tensor:
        """Return adversarial images for ``images`` (labels = targets when ``targeted``).

        ``true_labels`` (optional) are the clean labels, used by losses that need both (the Po+Trip
        triplet term; :class:`PoTrip` falls back to the model's clean predictions, the plain
        ``loss="po_trip"`` skips the triplet term without them).
        """
        images = check_images(images)
        out_device, out_dtype = images.device, images.dtype
        device = self._model_device(images.device)
        x = images.detach().to(device).clone()
        y = check_labels(labels, x.shape[0], device)
        y_true = None if true_labels is None else check_labels(true_labels, x.shape[0], device, "true_labels")
        if x.shape[0] == 0:
            return images.detach().clone()
        model = self.model
        was_training = getattr(model, "training", False)
        if self.model_mode == "eval" and isinstance(model, nn.Module):
            model.eval()
        try:
            self.state = AttackState(
                x=x, labels=y, generator=self._make_generator(device), true_labels=y_true
            )
            with torch.enable_grad():
                self.setup(x, y)
                delta = self.init_delta(x)
                m: Tensor | None = None
                for step in range(self.steps):
                    self.state.step = step
                    g = self.gradient(x, delta, y)
                    g = self.grad_transform(g)
                    m = self.accumulate(m, g)
                    self.state.momentum = m
                    delta = self.update(delta, m).detach()
                    delta = self.project(delta, x).detach()
            adv = self.finalize(x, delta).detach()
        finally:
            self.state = None
            if self.model_mode == "eval" and isinstance(model, nn.Module) and was_training:
                model.train()
        return adv.to(device=out_device, dtype=out_dtype)

    # ------------------------------------------------------------------ hooks
    def setup(self, x: Tensor, labels: Tensor) -> None:
        """Called once per attack call, before the first step (draw per-call randomness here)."""

    def init_delta(self, x: Tensor) -> Tensor:
        """Initial perturbation: zeros, or a random point of the eps-ball when ``random_start``."""
        if not self.random_start or self.eps == 0:
            return torch.zeros_like(x)
        gen = self.state.generator if self.state is not None else None
        if self.norm == "linf":
            delta = draw_uniform(
                tuple(x.shape), -self.eps, self.eps, generator=gen, device=x.device, dtype=x.dtype
            )
        else:
            d = draw_normal(tuple(x.shape), 1.0, generator=gen, device=x.device, dtype=x.dtype)
            n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            r = draw_uniform((x.shape[0], 1, 1, 1), 0.0, 1.0, generator=gen, device=x.device, dtype=x.dtype)
            delta = d / n * r * self.eps
        return self.project(delta, x)

    def perturb(self, x: Tensor, delta: Tensor) -> Tensor:
        """Adversarial image for the forward pass (``delta`` requires grad here)."""
        return x + delta if self.clip_delta else torch.clamp(x + delta, 0.0, 1.0)

    def transform(self, x: Tensor) -> Tensor:
        """Input transformation before the model; may stack copies along the batch (DI here)."""
        if self.di:
            x = input_diversity(x, self.resize_rate, self.diversity_prob, self._gen(), self.diversity_mode)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Model logits (override to count calls or to combine several models)."""
        return self.model(x)

    def base_objective(self, z: Tensor, labels: Tensor, x: Tensor) -> Tensor:
        """Signed loss to ascend: ``-loss`` for targeted attacks, ``+loss`` for untargeted ones."""
        labels = repeat_labels(labels, z.shape[0])
        if self.loss_fn is L.po_trip:
            true = self.state.true_labels if self.state is not None else None
            true = None if true is None else repeat_labels(true, z.shape[0])
            value = L.po_trip(z, labels, true, **self.po_trip_kwargs)
        else:
            value = self.loss_fn(z, labels)
        if value.ndim != 0:
            raise ValueError(f"loss must return a scalar, got shape {tuple(value.shape)}")
        return -value if self.targeted else value

    def objective(self, z: Tensor, labels: Tensor, x: Tensor) -> Tensor:
        """Scalar ascended by the attack; defaults to :meth:`base_objective`."""
        return self.base_objective(z, labels, x)

    def gradient(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        """Gradient of the objective w.r.t. ``delta``, averaged over ``passes``."""
        delta = delta.detach().requires_grad_(True)
        total: Tensor | None = None
        weight = 0
        if self.state is not None:
            self.state.delta = delta
        for p in range(self.passes):
            if self.state is not None:
                self.state.pass_index = p
            x_in = self.transform(self.perturb(x, delta))
            z = self.forward(x_in)
            obj = self.objective(z, labels, x_in)
            (g,) = torch.autograd.grad(obj, delta)
            if self.passes == 1:
                return l1_mean_normalize(g) if self.normalize_per_pass else g
            if self.normalize_per_pass:
                g = l1_mean_normalize(g)
            copies = max(1, z.shape[0] // x.shape[0])
            total = g * copies if total is None else total + g * copies
            weight += copies
        assert total is not None
        return total / weight

    def grad_transform(self, g: Tensor) -> Tensor:
        """TI smoothing (if ``ti``), then L1-mean normalisation (if ``normalize_grad``)."""
        if self.ti:
            g = ti_smooth(g, self.kernel)
        if self.normalize_grad:
            g = l1_mean_normalize(g)
        return g

    def accumulate(self, m: Tensor | None, g: Tensor) -> Tensor:
        """Momentum ``decay * m + g`` when ``mi``, else ``g``."""
        return momentum_update(m, g, self.decay) if self.mi else g

    def update(self, delta: Tensor, m: Tensor) -> Tensor:
        """One ascent step on ``delta`` along ``m``."""
        if self.norm == "linf":
            return delta + self.alpha * torch.sign(m)
        n = m.flatten(1).norm(dim=1).clamp_min(torch.finfo(m.dtype).tiny).view(-1, *([1] * (m.ndim - 1)))
        return delta + self.alpha * m / n

    def project(self, delta: Tensor, x: Tensor) -> Tensor:
        """Back into the eps-ball; also keeps ``x + delta`` in [0, 1] when ``clip_delta``."""
        if self.norm == "linf":
            delta = torch.clamp(delta, -self.eps, self.eps)
            if self.clip_delta:
                delta = torch.clamp(x + delta, 0.0, 1.0) - x
            return delta
        if self.clip_delta:
            return project_l2(x + delta, x, self.eps) - x
        return _l2_ball(delta, self.eps)

    def finalize(self, x: Tensor, delta: Tensor) -> Tensor:
        """Final adversarial images ``clip(x + delta, 0, 1)``."""
        return torch.clamp(x + delta, 0.0, 1.0)

    # ------------------------------------------------------------------ helpers
    def _gen(self) -> torch.Generator | None:
        return self.state.generator if self.state is not None else self.generator

    def _make_generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is not None:
            g = torch.Generator(device=device)
            g.manual_seed(int(self.seed))
            return g
        return self.generator

    def _model_device(self, fallback: torch.device) -> torch.device:
        if isinstance(self.model, nn.Module):
            for p in self.model.parameters():
                return p.device
            for b in self.model.buffers():
                return b.device
        return fallback

    def describe(self) -> dict[str, Any]:
        """Configuration summary for result rows / logs."""
        return {
            "attack": self.name,
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "targeted": self.targeted,
            "loss": self.loss_name,
            "di": self.di,
            "ti": self.ti,
            "mi": self.mi,
            "decay": self.decay,
            "norm": self.norm,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "attack")
        return f"{type(self).__name__}({args})"


def _l2_ball(delta: Tensor, eps: float) -> Tensor:
    n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.ndim - 1)))
    return delta * torch.clamp(eps / n.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)


# ============================================================================================
# presets
# ============================================================================================


class IFGSM(IterativeAttack):
    """I-FGSM / BIM (Kurakin et al., "Adversarial examples in the physical world", ICLR-W 2017).

    Sign-gradient steps projected to the eps-ball, no momentum (spec ibta §4, reference baseline).
    """

    name = "ifgsm"
    reference = "Kurakin et al., ICLR Workshop 2017"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        targeted: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mi", False)
        super().__init__(model, eps, alpha, steps, targeted, **kwargs)


class MIFGSM(IterativeAttack):
    """MI-FGSM (Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018).

    Momentum ``m <- mu * m + g / mean|g|`` with ``mu = decay`` (spec ibta §3.4-3.5, §4).
    """

    name = "mifgsm"
    reference = "Dong et al., CVPR 2018"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        targeted: bool = False,
        decay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mi", True)
        super().__init__(model, eps, alpha, steps, targeted, decay=decay, **kwargs)


class DIFGSM(IterativeAttack):
    """DI-MI-FGSM (Xie et al., "Improving Transferability of Adversarial Examples with Input
    Diversity", CVPR 2019): random resize-and-pad with probability 0.7 before each forward pass.

    Momentum is on by default (the DI-MI combination of spec ibta §3.5); ``mi=False`` gives DI2-FGSM.
    """

    name = "difgsm"
    reference = "Xie et al., CVPR 2019"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        targeted: bool = False,
        diversity_prob: float = 0.7,
        resize_rate: float = 0.9,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("di", True)
        kwargs.setdefault("mi", True)
        super().__init__(
            model,
            eps,
            alpha,
            steps,
            targeted,
            diversity_prob=diversity_prob,
            resize_rate=resize_rate,
            **kwargs,
        )


class TIFGSM(IterativeAttack):
    """TI-DI-MI-FGSM (Dong et al., "Evading Defenses to Transferable Adversarial Examples by
    Translation-Invariant Attacks", CVPR 2019): the gradient is convolved with a Gaussian kernel.

    Defaults follow the IBTA / Logit code (5x5 kernel, nsig 3, with DI and MI; spec ibta §3.5). The
    TI paper used larger kernels (up to 15x15) against defended models: pass ``ti_kernel=15``.
    """

    name = "tifgsm"
    reference = "Dong et al., CVPR 2019"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        targeted: bool = False,
        ti_kernel: int | Tensor = 5,
        ti_nsig: float = 3.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("ti", True)
        kwargs.setdefault("di", True)
        kwargs.setdefault("mi", True)
        super().__init__(model, eps, alpha, steps, targeted, ti_kernel=ti_kernel, ti_nsig=ti_nsig, **kwargs)


class SINIFGSM(IterativeAttack):
    """SI-NI-FGSM (Lin et al., "Nesterov Accelerated Gradient and Scale Invariance for Adversarial
    Attacks", ICLR 2020).

    Gradient at the Nesterov look-ahead ``x_adv + alpha * decay * m`` averaged over the scale copies
    ``x / 2^i``, ``i < num_scales`` (stacked in one pass). Paper defaults: eps 16/255, 10 steps,
    alpha = eps / 10, ``num_scales = 5``, ``decay = 1``.
    """

    name = "sinifgsm"
    reference = "Lin et al., ICLR 2020"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 1.6 / 255,
        steps: int = 10,
        targeted: bool = False,
        decay: float = 1.0,
        num_scales: int = 5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mi", True)
        super().__init__(model, eps, alpha, steps, targeted, decay=decay, **kwargs)
        if int(num_scales) != num_scales or num_scales < 1:
            raise ValueError(f"num_scales must be a positive integer, got {num_scales!r}")
        self.num_scales = int(num_scales)

    def transform(self, x: Tensor) -> Tensor:
        m = self.state.momentum if self.state is not None else None
        if m is not None:
            x = x + self.alpha * self.decay * m
        return super().transform(scale_copies(x, self.num_scales))


class VMIFGSM(IterativeAttack):
    """VMI-FGSM (Wang and He, "Enhancing the Transferability of Adversarial Attacks through Variance
    Tuning", CVPR 2021).

    The step uses ``g(x_adv) + v`` where ``v`` is the previous step's variance term: the mean
    gradient at ``n_neighbors`` points ``x_adv + r``, ``r ~ U[-beta*eps, beta*eps]``, minus the
    gradient at ``x_adv``. Paper defaults: ``n_neighbors = 20``, ``beta = 1.5``, eps 16/255, 10 steps,
    alpha 1.6/255, ``decay = 1`` (spec ibta §4, "should" baselines).
    """

    name = "vmifgsm"
    reference = "Wang and He, CVPR 2021"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 1.6 / 255,
        steps: int = 10,
        targeted: bool = False,
        decay: float = 1.0,
        n_neighbors: int = 20,
        beta: float = 1.5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mi", True)
        super().__init__(model, eps, alpha, steps, targeted, decay=decay, **kwargs)
        if int(n_neighbors) != n_neighbors or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
        self.n_neighbors = int(n_neighbors)
        self.beta = check_eps(beta, "beta")

    def setup(self, x: Tensor, labels: Tensor) -> None:
        if self.state is not None:
            self.state.extra["variance"] = torch.zeros_like(x)

    def gradient(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        assert self.state is not None
        g = super().gradient(x, delta, labels)
        radius = self.beta * self.eps
        neighbours = torch.zeros_like(g)
        for _ in range(self.n_neighbors):
            r = draw_uniform(
                tuple(x.shape), -radius, radius, generator=self._gen(), device=x.device, dtype=x.dtype
            )
            neighbours = neighbours + super().gradient(x, delta.detach() + r, labels)
        variance = self.state.extra["variance"]
        self.state.extra["variance"] = neighbours / self.n_neighbors - g
        return g + variance


class Admix(IterativeAttack):
    """Admix (Wang et al., "Admix: Enhancing the Transferability of Adversarial Attacks", ICCV 2021).

    Gradient averaged over ``(x_adv + eta * x') / 2^i`` for ``m2`` images ``x'`` drawn from ``pool``
    (default: the current batch) and ``m1`` scales, on top of MI-FGSM. Paper defaults: ``m1 = 5``,
    ``m2 = 3``, ``eta = 0.2``, eps 16/255, 10 steps, alpha 1.6/255.
    """

    name = "admix"
    reference = "Wang et al., ICCV 2021"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 1.6 / 255,
        steps: int = 10,
        targeted: bool = False,
        eta: float = 0.2,
        m1: int = 5,
        m2: int = 3,
        pool: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mi", True)
        super().__init__(model, eps, alpha, steps, targeted, **kwargs)
        if int(m1) != m1 or m1 < 1 or int(m2) != m2 or m2 < 1:
            raise ValueError(f"m1 and m2 must be positive integers, got {m1!r}, {m2!r}")
        if pool is not None:
            pool = check_images(pool, "pool").detach()
        self.eta, self.m1, self.m2, self.pool = float(eta), int(m1), int(m2), pool

    def transform(self, x: Tensor) -> Tensor:
        return super().transform(admix(x, self.pool, self.eta, self.m1, self.m2, self._gen()))


class SSA(IterativeAttack):
    """S2I-FGSM / SSA (Long et al., "Frequency Domain Model Augmentation for Adversarial Attack",
    ECCV 2022): gradient averaged over ``n_spectrum`` spectrum-simulated copies per step.

    ``ssa_mode="ssa_paper"`` transforms ``x_adv``: ``IDCT(DCT(x_adv + xi) * M)`` with ``xi ~ N(0,
    sigma^2)``, ``sigma = 16/255`` and ``M ~ U[1 - rho, 1 + rho]``; with ``straight_through=True`` the
    gradient is taken w.r.t. the transformed image (as in the official SSA code), with False it is
    back-propagated through the transform. ``ssa_mode="ibta_code"`` adds the perturbation after the
    transform of the clean image, ``IDCT(DCT(x + xi) * M) + delta``, without clamping (spec ibta §3.5,
    §6). ``copies_per_pass`` copies are stacked per forward pass (memory vs. speed). MI is on by
    default (S2I-MI-FGSM); ``mi=False`` gives plain S2I-FGSM.
    """

    name = "ssa"
    reference = "Long et al., ECCV 2022"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 1.6 / 255,
        steps: int = 10,
        targeted: bool = False,
        n_spectrum: int = 20,
        rho: float = 0.5,
        sigma: float = 16 / 255,
        ssa_mode: str = "ssa_paper",
        straight_through: bool = True,
        copies_per_pass: int = 1,
        **kwargs: Any,
    ) -> None:
        if int(n_spectrum) != n_spectrum or n_spectrum < 1:
            raise ValueError(f"n_spectrum must be a positive integer, got {n_spectrum!r}")
        if int(copies_per_pass) != copies_per_pass or copies_per_pass < 1:
            raise ValueError(f"copies_per_pass must be a positive integer, got {copies_per_pass!r}")
        if ssa_mode not in ("ssa_paper", "ibta_code"):
            raise ValueError(f"ssa_mode must be 'ssa_paper' or 'ibta_code', got {ssa_mode!r}")
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        kwargs.setdefault("mi", True)
        kwargs["passes"] = math.ceil(int(n_spectrum) / int(copies_per_pass))
        super().__init__(model, eps, alpha, steps, targeted, **kwargs)
        self.n_spectrum = int(n_spectrum)
        self.copies_per_pass = int(copies_per_pass)
        self.rho = float(rho)
        self.sigma = check_eps(sigma, "sigma")
        self.ssa_mode = ssa_mode
        self.straight_through = bool(straight_through)

    def copies_in_pass(self, index: int) -> int:
        """Number of spectrum copies stacked in forward pass ``index``."""
        return min(self.copies_per_pass, self.n_spectrum - index * self.copies_per_pass)

    def perturb(self, x: Tensor, delta: Tensor) -> Tensor:
        if self.ssa_mode == "ibta_code":
            return x + delta
        return super().perturb(x, delta)

    def spectrum(self, x: Tensor) -> Tensor:
        """One spectrum-simulation draw for every row of ``x``."""
        return spectrum_transform(x, self.rho, self.sigma, self._gen())

    def transform(self, x: Tensor) -> Tensor:
        c = self.copies_in_pass(self.state.pass_index if self.state is not None else 0)
        xs = x.repeat(c, 1, 1, 1) if c > 1 else x
        if self.ssa_mode == "ibta_code":
            clean = self.state.x if self.state is not None else x.detach()
            clean = clean.repeat(c, 1, 1, 1) if c > 1 else clean
            out = self.spectrum(clean) + (xs - clean)
        elif self.straight_through:
            out = xs + (self.spectrum(xs.detach()) - xs.detach())
        else:
            out = self.spectrum(xs)
        return super().transform(out)


class LogitAttack(IterativeAttack):
    """Logit attack (Zhao et al., "On Success and Simplicity: A Second Look at Transferable Targeted
    Attacks", NeurIPS 2021): DI-TI-MI with the loss ``-z_t``, 300 iterations, alpha 2/255.

    As in the authors' code, momentum accumulates the TI-smoothed gradient without the L1-mean
    normalisation (``normalize_grad=False``); the IBTA code normalises (pass ``normalize_grad=True``).
    Spec esma §4, ibta §3.5 / §4.
    """

    name = "logit"
    reference = "Zhao et al., NeurIPS 2021"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 300,
        targeted: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("loss", "logit")
        kwargs.setdefault("di", True)
        kwargs.setdefault("ti", True)
        kwargs.setdefault("mi", True)
        kwargs.setdefault("normalize_grad", False)
        super().__init__(model, eps, alpha, steps, targeted, **kwargs)


class PoTrip(IterativeAttack):
    """Po+Trip targeted attack (Li et al., "Towards Transferable Targeted Attack", CVPR 2020) in the
    DI-TI-MI / 300-iteration setting of Zhao et al. (NeurIPS 2021); spec esma §4.

    Pass the clean labels as ``attack(images, targets, true_labels=y)`` for the triplet term; when
    omitted, the surrogate's clean predictions are used. ``margin``, ``weight`` and ``triplet`` are
    forwarded to :func:`~papers_shared.attacks.losses.po_trip`.
    """

    name = "po_trip"
    reference = "Li et al., CVPR 2020"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 300,
        targeted: bool = True,
        margin: float = 0.007,
        weight: float = 0.01,
        triplet: str = "paper",
        **kwargs: Any,
    ) -> None:
        if not targeted:
            raise ValueError("PoTrip is a targeted attack: use targeted=True")
        if triplet not in ("paper", "zhao_code"):
            raise ValueError(f"triplet must be 'paper' or 'zhao_code', got {triplet!r}")
        kwargs["loss"] = "po_trip"
        kwargs.setdefault("di", True)
        kwargs.setdefault("ti", True)
        kwargs.setdefault("mi", True)
        kwargs.setdefault("normalize_grad", False)
        super().__init__(model, eps, alpha, steps, True, **kwargs)
        self.po_trip_kwargs = {"margin": float(margin), "weight": float(weight), "triplet": triplet}

    def setup(self, x: Tensor, labels: Tensor) -> None:
        if self.state is not None and self.state.true_labels is None:
            with torch.no_grad():
                self.state.true_labels = self.forward(x).argmax(dim=1)


class RAP(IterativeAttack):
    """RAP / RAP-LS (Qin et al., "Boosting the Transferability of Adversarial Attacks with Reverse
    Adversarial Perturbation", NeurIPS 2022): min-max with a reverse perturbation ``n``.

    From step ``late_start`` on (RAP-LS; ``late_start=0`` is plain RAP) every outer step first finds
    ``n`` and then takes the gradient at ``x + delta + n``. ``inner_mode="official"`` follows the
    official RAP code: ``inner_steps`` PGD steps (random start, step ``alpha_n = eps_n / inner_steps``,
    bound ``eps_n = 16/255``, ``x + delta + n`` kept in [0, 1]) that raise the cross-entropy of the
    surrogate's current prediction, with no input transformation. ``inner_mode="reverse"`` is the
    IBTA-code variant (spec ibta §3.5): ascend the negated outer base objective on
    ``clip(x + delta + n)`` with the same transform, TI, normalisation and a fresh momentum, ``n``
    clipped to ``[-eps_n, eps_n]`` only. See :class:`RAPIBTA` for that configuration.
    """

    name = "rap"
    reference = "Qin et al., NeurIPS 2022"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 2 / 255,
        steps: int = 400,
        targeted: bool = False,
        late_start: int = 100,
        inner_steps: int = 8,
        eps_n: float = 16 / 255,
        alpha_n: float | None = None,
        inner_random_start: bool = True,
        inner_mode: str = "official",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mi", False)
        super().__init__(model, eps, alpha, steps, targeted, **kwargs)
        if int(late_start) != late_start or late_start < 0:
            raise ValueError(f"late_start must be a non-negative integer, got {late_start!r}")
        if int(inner_steps) != inner_steps or inner_steps < 0:
            raise ValueError(f"inner_steps must be a non-negative integer, got {inner_steps!r}")
        if inner_mode not in ("official", "reverse"):
            raise ValueError(f"inner_mode must be 'official' or 'reverse', got {inner_mode!r}")
        self.late_start = int(late_start)
        self.inner_steps = int(inner_steps)
        self.eps_n = check_eps(eps_n, "eps_n")
        if alpha_n is None:
            alpha_n = self.eps_n / max(self.inner_steps, 1) if inner_mode == "official" else self.alpha
        self.alpha_n = check_eps(alpha_n, "alpha_n")
        self.inner_random_start = bool(inner_random_start)
        self.inner_mode = inner_mode

    def gradient(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        assert self.state is not None
        if self.state.step >= self.late_start and self.inner_steps > 0:
            self.state.extra["rap_n"] = self.reverse_perturbation(x, delta.detach(), labels)
        else:
            self.state.extra.pop("rap_n", None)
        return super().gradient(x, delta, labels)

    def perturb(self, x: Tensor, delta: Tensor) -> Tensor:
        n = self.state.extra.get("rap_n") if self.state is not None else None
        if n is None:
            return super().perturb(x, delta)
        if self.inner_mode == "official":
            return super().perturb(x, delta) + n
        return torch.clamp(x + delta + n, 0.0, 1.0)

    def reverse_perturbation(self, x: Tensor, delta: Tensor, labels: Tensor) -> Tensor:
        """The inner maximisation: returns the (detached) reverse perturbation ``n``."""
        gen = self._gen()
        if self.inner_mode == "official":
            x0 = IterativeAttack.perturb(self, x, delta).detach()
            with torch.no_grad():
                pred = self.forward(x0).argmax(dim=1)
            if self.inner_random_start:
                n = draw_uniform(
                    tuple(x.shape), -self.eps_n, self.eps_n, generator=gen, device=x.device, dtype=x.dtype
                )
                n = torch.clamp(x0 + n, 0.0, 1.0) - x0
            else:
                n = torch.zeros_like(x)
            for _ in range(self.inner_steps):
                n = n.detach().requires_grad_(True)
                obj = L.ce(self.forward(x0 + n), pred, reduction="sum")
                (g,) = torch.autograd.grad(obj, n)
                n = torch.clamp(n.detach() + self.alpha_n * torch.sign(g), -self.eps_n, self.eps_n)
                n = torch.clamp(x0 + n, 0.0, 1.0) - x0
            return n.detach()
        if self.inner_random_start:
            n = draw_uniform(
                tuple(x.shape), -self.eps_n, self.eps_n, generator=gen, device=x.device, dtype=x.dtype
            )
        else:
            n = torch.zeros_like(x)
        m: Tensor | None = None
        for _ in range(self.inner_steps):
            n = n.detach().requires_grad_(True)
            x_in = self.transform(torch.clamp(x + delta + n, 0.0, 1.0))
            obj = -self.base_objective(self.forward(x_in), labels, x_in)
            (g,) = torch.autograd.grad(obj, n)
            m = self.accumulate(m, self.grad_transform(g))
            n = torch.clamp(n.detach() + self.alpha_n * torch.sign(m), -self.eps_n, self.eps_n)
        return n.detach()


class RAPIBTA(RAP):
    """RAP-LS as configured in the IBTA official code (the baseline of IBTA-RAP-Logit-TI).

    DI + TI + MI with the logit loss, 400 steps, late start 100, alpha 1.25/255, one inner step in
    ``"reverse"`` mode with ``alpha_n = alpha``, ``eps_n = 12/255`` (the code's unscaled bound 12 never
    binds after one step), no inner random start, and ``delta`` not kept in the [0, 1] box
    (``clip_delta=False``). Spec ibta §3.5, §3.7, §6.
    """

    name = "rap_ibta"
    reference = "Qin et al., NeurIPS 2022 (IBTA-code setting)"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        alpha: float = 1.25 / 255,
        steps: int = 400,
        targeted: bool = False,
        late_start: int = 100,
        inner_steps: int = 1,
        eps_n: float = 12 / 255,
        alpha_n: float | None = None,
        inner_random_start: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("loss", "logit")
        kwargs.setdefault("di", True)
        kwargs.setdefault("ti", True)
        kwargs.setdefault("mi", True)
        kwargs.setdefault("clip_delta", False)
        kwargs["inner_mode"] = "reverse"
        super().__init__(
            model,
            eps,
            alpha,
            steps,
            targeted,
            late_start=late_start,
            inner_steps=inner_steps,
            eps_n=eps_n,
            alpha_n=alpha_n,
            inner_random_start=inner_random_start,
            **kwargs,
        )


PRESETS: dict[str, type[IterativeAttack]] = {
    "iterative": IterativeAttack,
    "ifgsm": IFGSM,
    "mifgsm": MIFGSM,
    "difgsm": DIFGSM,
    "tifgsm": TIFGSM,
    "sinifgsm": SINIFGSM,
    "vmifgsm": VMIFGSM,
    "admix": Admix,
    "ssa": SSA,
    "logit": LogitAttack,
    "po_trip": PoTrip,
    "rap": RAP,
    "rap_ibta": RAPIBTA,
}
presets = PRESETS


def register_preset(name: str, cls: type[IterativeAttack], *, overwrite: bool = False) -> None:
    """Add an attack class to :data:`PRESETS` so :func:`create_attack` can build it by name."""
    if not (isinstance(cls, type) and issubclass(cls, IterativeAttack)):
        raise TypeError("cls must be a subclass of IterativeAttack")
    if name in PRESETS and not overwrite:
        raise ValueError(f"preset {name!r} already registered (pass overwrite=True to replace it)")
    PRESETS[name] = cls


def create_attack(name: str, model: nn.Module, **kwargs: Any) -> IterativeAttack:
    """Build a preset by name, e.g. ``create_attack("tifgsm", model, eps=8/255, targeted=True)``."""
    key = name.lower().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown attack preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[key](model, **kwargs)
