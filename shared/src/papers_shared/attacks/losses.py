"""Losses for adversarial attacks and generator training.

Convention: every attack loss ``loss(logits, labels)`` measures how strongly the logits agree with
``labels`` (lower = more agreement). A targeted attack *minimises* it for the target ids, an
untargeted attack *maximises* it for the true labels; :class:`~papers_shared.attacks.IterativeAttack`
applies the sign. User callables passed as ``IterativeAttack(loss=...)`` follow the same convention.

* :func:`ce` -- cross-entropy (mean over the batch);
* :func:`logit_loss` -- ``-mean_b z[b, t_b]`` (Zhao et al., "On Success and Simplicity: A Second Look
  at Transferable Targeted Attacks", NeurIPS 2021);
* :func:`po_trip` -- Poincare distance + triplet loss (Li et al., "Towards Transferable Targeted
  Attack", CVPR 2020);
* :func:`symmetric_kl` -- weighted two-way KL between softmax distributions (IBTA divergence, TTP
  / ESMA structure losses);
* :func:`smooth_l1_match` -- SmoothL1 summed over logits, divided by the batch size (ESMA §3.5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "ce",
    "get_loss",
    "logit_loss",
    "po_trip",
    "smooth_l1_match",
    "symmetric_kl",
]


def _check_logits(z: Tensor, labels: Tensor) -> None:
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (B, num_classes), got {tuple(z.shape)}")
    if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(labels.shape)}")


def ce(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy ``-log softmax(z)[y]``."""
    _check_logits(logits, labels)
    return F.cross_entropy(logits, labels, reduction=reduction)


def logit_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Logit loss ``-z[b, y_b]``, averaged over the batch by default (``-mean z_t``)."""
    _check_logits(logits, labels)
    picked = -logits.gather(1, labels.view(-1, 1)).squeeze(1)
    if reduction == "mean":
        return picked.mean()
    if reduction == "sum":
        return picked.sum()
    if reduction == "none":
        return picked
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def po_trip(
    logits: Tensor,
    target: Tensor,
    true_labels: Tensor | None = None,
    *,
    margin: float = 0.007,
    weight: float = 0.01,
    xi: float = 1e-5,
    triplet: str = "paper",
) -> Tensor:
    """Po+Trip loss of Li et al. (CVPR 2020), to be minimised for a targeted attack.

    Poincare term: ``arccosh(1 + 2||u - v||^2 / ((1 - ||u||^2)(1 - ||v||^2)))`` with ``u = z / ||z||_1``
    and ``v = clip(onehot(t) - xi, 0, 1)``. Triplet term (skipped when ``true_labels`` is None):
    ``clamp(D(z, t) - D(z, y) + margin, 0, 2.1)`` with the angular distance ``D = 1 - |cos|`` to the
    one-hot vectors, i.e. ``cos(z, y) - cos(z, t) + margin``; ``triplet="zhao_code"`` uses the opposite
    sign found in the widely used re-implementation of Zhao et al. (NeurIPS 2021). Each term is
    averaged over the batch; the loss is ``poincare + weight * triplet``.
    """
    _check_logits(logits, target)
    if triplet not in ("paper", "zhao_code"):
        raise ValueError(f"triplet must be 'paper' or 'zhao_code', got {triplet!r}")
    num_classes = logits.shape[1]
    onehot_t = F.one_hot(target, num_classes).to(logits.dtype)
    u = logits / logits.abs().sum(dim=1, keepdim=True).clamp_min(torch.finfo(logits.dtype).tiny)
    v = torch.clamp(onehot_t - xi, 0.0, 1.0)
    uu = (u * u).sum(dim=1)
    vv = (v * v).sum(dim=1)
    delta = 2.0 * ((u - v) ** 2).sum(dim=1) / ((1.0 - uu).clamp_min(1e-12) * (1.0 - vv))
    loss = torch.acosh(1.0 + delta).mean()
    if true_labels is not None:
        _check_logits(logits, true_labels)
        norms = logits.norm(dim=1).clamp_min(torch.finfo(logits.dtype).tiny)
        cos_t = logits.gather(1, target.view(-1, 1)).squeeze(1).abs() / norms
        cos_y = logits.gather(1, true_labels.view(-1, 1)).squeeze(1).abs() / norms
        diff = cos_y - cos_t if triplet == "paper" else cos_t - cos_y
        loss = loss + weight * torch.clamp(diff + margin, 0.0, 2.1).mean()
    return loss


def symmetric_kl(
    p_logits: Tensor,
    q_logits: Tensor,
    w_qp: float = 1.0,
    w_pq: float = 1.0,
    reduction: str = "batchmean",
    dim: int = -1,
) -> Tensor:
    """``w_qp * KL(q || p) + w_pq * KL(p || q)`` with ``p = softmax(p_logits)``, ``q = softmax(q_logits)``.

    ``reduction``: ``"batchmean"`` (sum over ``dim``, mean over the rest; IBTA), ``"mean"`` (mean over
    all entries; PyTorch ``KLDivLoss`` default, used by ESMA's structure loss), ``"sum"`` or
    ``"none"`` (per-row values).
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"shape mismatch: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    log_p = F.log_softmax(p_logits, dim=dim)
    log_q = F.log_softmax(q_logits, dim=dim)
    diff = log_p - log_q
    elem = w_pq * log_p.exp() * diff - w_qp * log_q.exp() * diff
    if reduction == "batchmean":
        return elem.sum(dim=dim).mean()
    if reduction == "mean":
        return elem.mean()
    if reduction == "sum":
        return elem.sum()
    if reduction == "none":
        return elem.sum(dim=dim)
    raise ValueError(f"reduction must be 'batchmean', 'mean', 'sum' or 'none', got {reduction!r}")


def smooth_l1_match(
    logits: Tensor,
    anchors: Tensor,
    beta: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """``(1/B) sum_b mask_b sum_c SmoothL1_beta(z[b, c] - a[b, c])``.

    ``anchors`` is ``(B, C)`` or a single ``(C,)`` row. Masked rows contribute zero but still count in
    the denominator ``B`` (the stage-2 matching loss of the ESMA official code, gjq100/ESMA).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}")
    anchors = anchors.to(logits.dtype)
    if anchors.ndim == 1:
        anchors = anchors.expand_as(logits)
    if anchors.shape != logits.shape:
        raise ValueError(f"anchors must have shape {tuple(logits.shape)}, got {tuple(anchors.shape)}")
    per_row = F.smooth_l1_loss(logits, anchors, beta=beta, reduction="none").sum(dim=1)
    if mask is not None:
        if mask.shape != per_row.shape:
            raise ValueError(f"mask must have shape ({logits.shape[0]},), got {tuple(mask.shape)}")
        per_row = per_row * mask.to(per_row.dtype)
    return per_row.sum() / max(logits.shape[0], 1)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": ce,
    "logit": logit_loss,
    "po_trip": po_trip,
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """Look up an attack loss by name (``"ce"``, ``"logit"``, ``"po_trip"``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; choose one of {sorted(LOSSES)} or pass a callable"
        ) from None
