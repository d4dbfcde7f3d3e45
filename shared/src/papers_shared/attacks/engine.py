"""The iterative-attack engine: one loop with overridable hooks, shared by every preset.

One loop serves every gradient attack of the transfer literature (I-FGSM, Kurakin et al., ICLR-W 2017;
MI-FGSM, Dong et al., CVPR 2018, Algorithm 1; and the presets built on them)::

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

Presets change defaults, not the signature: the arguments ``eps, alpha, steps, targeted, loss, di, ti,
mi, decay`` (positional, in that order) and ``normalize_grad, clip_delta`` are declared once, here, and
an argument left at :data:`DEFAULT` takes the value of the class's :attr:`IterativeAttack.defaults`
(a preset lists only what it changes, e.g. ``defaults = {"di": True}``; the mapping is merged along
the class hierarchy). A preset's ``__init__`` declares only its own extra options (keyword-only).

Call convention (torchattacks): ``adv = attack(images, labels)``; with ``targeted=True`` the labels
are the target ids. The result is a detached image tensor with the input's shape, dtype and device;
the inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import losses as L
from ._checks import check_eps, check_images, check_labels, draw_normal, draw_uniform
from .ops import gaussian_kernel, input_diversity, l1_mean_normalize, momentum_update, project_l2, ti_smooth

__all__ = ["DEFAULT", "AttackState", "IterativeAttack", "LossFn", "positive_int", "repeat_labels"]

LossFn = Callable[[Tensor, Tensor], Tensor]


class _Default:
    """Marker of an argument left to the class's :attr:`IterativeAttack.defaults`."""

    _instance: _Default | None = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"


#: An argument left at ``DEFAULT`` takes the value in the attack class's ``defaults``.
DEFAULT: Any = _Default()


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``int(value)`` if it is an integer >= ``minimum``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative" if minimum == 0 else f"an >= {minimum}"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


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

    Every argument left at :data:`DEFAULT` takes its value from :attr:`defaults` (the values below are
    those of this class; presets change some of them).

    Args:
        model: classifier taking [0, 1] images (wrap it with :class:`ImageNetWrapper` if needed).
        eps: perturbation budget (L-inf, or L2 radius when ``norm="l2"``); default 16/255.
        alpha: step size; default 2/255.
        steps: number of iterations; default 10.
        targeted: if True, ``labels`` are target ids and the loss is minimised; default False.
        loss: ``"ce"``, ``"logit"``, ``"po_trip"`` or a callable ``loss(logits, labels) -> scalar``
            (lower = closer to ``labels``; e.g. ESMA's easy-sample matching loss); default ``"ce"``.
        di: apply input diversity (Xie et al., CVPR 2019) before every forward pass; default False.
        ti: smooth the gradient with a Gaussian kernel (Dong et al., CVPR 2019); default False.
        mi: accumulate momentum over L1-mean-normalised gradients (Dong et al., CVPR 2018); default
            True.
        decay: momentum decay ``mu``; default 1.0.
        random_start: start from a uniform point in the eps-ball (L2: random direction and radius).
        norm: ``"linf"`` (sign steps) or ``"l2"`` (normalised-gradient steps).
        diversity_prob, resize_rate, diversity_mode: DI parameters (probability, resize rate,
            interpolation mode).
        ti_kernel: TI kernel size (int) or an explicit ``(C, 1, k, k)`` kernel tensor.
        ti_nsig: TI kernel extent in standard deviations.
        normalize_grad: divide the gradient by its per-sample mean absolute value before
            accumulation; ``None`` means ``mi``.
        clip_delta: keep ``x + delta`` in [0, 1] after every step (torchattacks convention; default). With
            False, ``delta`` is only eps-bounded and the forward pass uses ``clip(x + delta)``, the
            gradient flowing through the clamp (as the IBTA official code, ``used_attacks.py``, commit
            6866b7a, every ``forward``).
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
    #: Values of the arguments left at :data:`DEFAULT`. A subclass lists only what it changes; the
    #: mapping is merged along the class hierarchy when the subclass is created.
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            "eps": 16 / 255,
            "alpha": 2 / 255,
            "steps": 10,
            "targeted": False,
            "loss": "ce",
            "di": False,
            "ti": False,
            "mi": True,
            "decay": 1.0,
            "normalize_grad": None,
            "clip_delta": True,
        }
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            own = klass.__dict__.get("_own_defaults", klass.__dict__.get("defaults"))
            if own is None or not isinstance(own, Mapping):
                continue
            unknown = set(own) - set(IterativeAttack.defaults)
            if unknown:
                raise TypeError(f"{klass.__name__}.defaults names unknown arguments {sorted(unknown)}")
            merged.update(own)
        cls._own_defaults = MappingProxyType(dict(cls.__dict__.get("defaults", {})))
        cls.defaults = MappingProxyType(merged)

    def __init__(
        self,
        model: nn.Module,
        eps: float = DEFAULT,
        alpha: float = DEFAULT,
        steps: int = DEFAULT,
        targeted: bool = DEFAULT,
        loss: str | LossFn = DEFAULT,
        di: bool = DEFAULT,
        ti: bool = DEFAULT,
        mi: bool = DEFAULT,
        decay: float = DEFAULT,
        *,
        random_start: bool = False,
        norm: str = "linf",
        diversity_prob: float = 0.7,
        resize_rate: float = 0.9,
        diversity_mode: str = "bilinear",
        ti_kernel: int | Tensor = 5,
        ti_nsig: float = 3.0,
        normalize_grad: bool | None = DEFAULT,
        clip_delta: bool = DEFAULT,
        passes: int = 1,
        normalize_per_pass: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        model_mode: str = "eval",
    ) -> None:
        d = type(self).defaults

        def pick(name: str, value: Any) -> Any:
            return d[name] if value is DEFAULT else value

        eps, alpha, steps, targeted = (
            pick("eps", eps),
            pick("alpha", alpha),
            pick("steps", steps),
            pick("targeted", targeted),
        )
        loss, di, ti, mi, decay = (
            pick("loss", loss),
            pick("di", di),
            pick("ti", ti),
            pick("mi", mi),
            pick("decay", decay),
        )
        normalize_grad, clip_delta = pick("normalize_grad", normalize_grad), pick("clip_delta", clip_delta)
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError("model must be an nn.Module or a callable returning logits")
        self.model = model
        self.eps = check_eps(eps, "eps")
        self.alpha = check_eps(alpha, "alpha")
        self.steps = positive_int(steps, "steps", minimum=0)
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
        self.passes = positive_int(passes, "passes")
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
        return self.diversity(x) if self.di else x

    def diversity(self, x: Tensor) -> Tensor:
        """One DI draw (random resize and pad, :func:`~.ops.input_diversity`) applied to ``x``."""
        return input_diversity(x, self.resize_rate, self.diversity_prob, self._gen(), self.diversity_mode)

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
