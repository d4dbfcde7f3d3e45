"""The IB objective of IBTA as implemented by the official code (``used_attacks.py``, commit 6866b7a,
the ``cost`` of every ``IBTA_*.forward`` and ``double_kl_div``).

Notation (ours): ``z = f(T(clip(x + delta)))`` are the surrogate logits of the adversarial image,
``z~ = f(T'(clip(x~ + delta)))`` those of the noisy companion (:mod:`ibta.noise`), ``p = softmax(z)``,
``p~ = softmax(z~)``.

* Divergence (``double_kl_div``, "D_gamma"): ``D(z, z~) = gamma_kl * KL(p~ || p) + KL(p || p~)``, ``batchmean``
  reduction (sum over classes, mean over the batch).
* Targeted (delta descends): ``L_tgt = l(z, t) + gamma * l(z~, t) + lam * D(z, z~)``.
* Untargeted (delta ascends): ``J_untgt = l(z, y) + gamma * l(z~, y) - lam * D(z, z~)``.

:func:`ib_objective` returns the scalar the attack **ascends**: ``-L_tgt`` or ``J_untgt``. In both
modes the divergence is minimised. ``l`` is the cross-entropy (MI/DI/TI/S2I variants) or the logit
loss ``-mean_b z[b, c]`` (Logit-TI, RAP-Logit-TI).

Our reading of the terms (ours, an interpretation, not the paper's theorem): cross-entropy is the
variational lower bound ``I(Z; Y) >= H(Y) - E[CE]`` on the predictive term, and asking one shared
``delta`` to give the same prediction on ``x`` and on a noisy copy of ``x`` penalises reliance on
input-specific detail, a tractable proxy for a small ``I(delta; X)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from papers_shared.attacks import losses as L

__all__ = ["ib_divergence", "ib_objective", "ib_terms", "resolve_base_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_pair(z: Tensor, z_tilde: Tensor) -> None:
    for name, t in (("z", z), ("z_tilde", z_tilde)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{name} must be logits of shape (B, num_classes), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    if z.shape != z_tilde.shape:
        raise ValueError(
            f"z and z_tilde must have the same shape, got {tuple(z.shape)} vs {tuple(z_tilde.shape)}"
        )
    if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(z_tilde).all())):
        raise ValueError("logits contain NaN or inf values")


def _check_weight(value: float, name: str) -> float:
    v = float(value)
    if v != v or v < 0 or v == float("inf"):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def ib_divergence(z: Tensor, z_tilde: Tensor, gamma_kl: float = 0.1) -> Tensor:
    """``gamma_kl * KL(p~ || p) + KL(p || p~)`` with ``batchmean`` reduction (``double_kl_div``).

    Same value as the code's ``gamma * KLDiv(log_softmax(z), softmax(z~)) + KLDiv(log_softmax(z~),
    softmax(z))`` with PyTorch's ``KLDivLoss(reduction="batchmean")``. Non-negative, zero iff
    ``softmax(z) == softmax(z~)`` row-wise.
    """
    _check_pair(z, z_tilde)
    g = _check_weight(gamma_kl, "gamma_kl")
    # symmetric_kl(p_logits, q_logits, w_qp, w_pq) = w_qp * KL(q || p) + w_pq * KL(p || q)
    return L.symmetric_kl(z, z_tilde, w_qp=g, w_pq=1.0, reduction="batchmean")


def resolve_base_loss(base_loss: str | LossFn) -> LossFn:
    """``"ce"`` -> cross-entropy, ``"logit"`` -> ``-mean z_c``; a callable is used as is."""
    if callable(base_loss):
        return base_loss
    if base_loss not in ("ce", "logit"):
        raise ValueError(f"base_loss must be 'ce', 'logit' or a callable, got {base_loss!r}")
    return L.get_loss(base_loss)


def ib_terms(
    z: Tensor,
    z_tilde: Tensor,
    labels: Tensor,
    targeted: bool,
    gamma: float = 0.1,
    lam: float = 0.1,
    base_loss: str | LossFn = "ce",
    gamma_kl: float | None = None,
) -> dict[str, Tensor]:
    """All terms of the objective: ``loss`` = l(z, c), ``noisy_loss`` = l(z~, c), ``divergence`` = D,
    and ``objective`` (the ascent scalar of :func:`ib_objective`)."""
    _check_pair(z, z_tilde)
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {shape}")
    gamma = _check_weight(gamma, "gamma")
    lam = _check_weight(lam, "lam")
    gamma_kl = gamma if gamma_kl is None else _check_weight(gamma_kl, "gamma_kl")
    loss_fn = resolve_base_loss(base_loss)
    loss = loss_fn(z, labels)
    noisy = loss_fn(z_tilde, labels)
    div = ib_divergence(z, z_tilde, gamma_kl)
    if targeted:  # ascend -L_tgt
        obj = -(loss + gamma * noisy + lam * div)
    else:  # ascend J_untgt
        obj = loss + gamma * noisy - lam * div
    return {"loss": loss, "noisy_loss": noisy, "divergence": div, "objective": obj}


def ib_objective(
    z: Tensor,
    z_tilde: Tensor,
    labels: Tensor,
    targeted: bool,
    gamma: float = 0.1,
    lam: float = 0.1,
    base_loss: str | LossFn = "ce",
    gamma_kl: float | None = None,
) -> Tensor:
    """The scalar IBTA **ascends**: ``-L_tgt`` when ``targeted`` else ``J_untgt``.

    ``labels`` are target ids (targeted) or true labels (untargeted). ``gamma_kl`` (default
    ``gamma``, as in the code where one ``gamma`` plays both roles) weights ``KL(p~ || p)``.
    """
    return ib_terms(z, z_tilde, labels, targeted, gamma, lam, base_loss, gamma_kl)["objective"]
