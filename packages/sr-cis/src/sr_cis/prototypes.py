"""Representation memory: prototype heads (the paper's "prototype weights and biases"; form ours).

Euclidean head (NCM written as a linear layer)::

    P[c] = p_c,  b[c] = -1/2 ||p_c||^2   =>   P h + b = -1/2 ||h - p_c||^2 + 1/2 ||h||^2

so ``argmax_c (P h + b) = argmin_c ||h - p_c||``. Cosine head: ``P[c] = p_c / ||p_c||``, ``b = 0``,
logits ``= cos(h, P[c]) / tau``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrototypeHead", "compute_prototypes", "concat_heads"]


class PrototypeHead(nn.Module):
    """A linear head over the classes ``classes`` (global ids, in this order)."""

    def __init__(self, classes: Sequence[int], dim: int, norm: str = "euclid", tau: float = 0.1) -> None:
        super().__init__()
        if norm not in ("euclid", "cosine"):
            raise ValueError(f"norm must be 'euclid' or 'cosine', got {norm!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        classes = [int(c) for c in classes]
        if len(classes) == 0 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be non-empty and unique, got {classes}")
        self.classes = classes
        self.norm = norm
        self.tau = float(tau)
        self.weight = nn.Parameter(torch.zeros(len(classes), dim))
        self.bias = nn.Parameter(torch.zeros(len(classes)))

    @classmethod
    def from_prototypes(
        cls, prototypes: torch.Tensor, classes: Sequence[int], norm: str = "euclid", tau: float = 0.1
    ) -> PrototypeHead:
        if prototypes.ndim != 2 or prototypes.shape[0] != len(classes):
            raise ValueError(f"prototypes must be [C={len(classes)}, d], got shape {tuple(prototypes.shape)}")
        head = cls(classes, prototypes.shape[1], norm, tau)
        head.set_prototypes(prototypes)
        return head

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor, rows: Sequence[int] | None = None) -> None:
        """Overwrite ``(P, b)`` (all rows, or ``rows``) from class means."""
        if not torch.isfinite(prototypes).all():
            raise ValueError("prototypes contain NaN or inf")
        idx = list(range(len(self.classes))) if rows is None else list(rows)
        if prototypes.shape != (len(idx), self.weight.shape[1]):
            raise ValueError(f"expected prototypes of shape {(len(idx), self.weight.shape[1])}")
        p = prototypes.to(self.weight)
        if self.norm == "euclid":
            self.weight[idx] = p
            self.bias[idx] = -0.5 * (p * p).sum(1)
        else:
            self.weight[idx] = F.normalize(p, dim=1)
            self.bias[idx] = 0.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 2 or h.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features must be [B, {self.weight.shape[1]}], got {tuple(h.shape)}")
        if self.norm == "euclid":
            return F.linear(h, self.weight, self.bias)
        return F.linear(F.normalize(h, dim=1), F.normalize(self.weight, dim=1)) / self.tau + self.bias

    def extra_repr(self) -> str:
        return f"classes={len(self.classes)}, dim={self.weight.shape[1]}, norm={self.norm}"


def concat_heads(heads: Sequence[PrototypeHead], order: str = "class_id") -> PrototypeHead:
    """One head holding every row of ``heads`` (the merged LTM head), rows sorted by class id."""
    if not heads:
        raise ValueError("need at least one head")
    rows = [(c, h, i) for h in heads for i, c in enumerate(h.classes)]
    if order == "class_id":
        rows.sort(key=lambda r: r[0])
    classes = [r[0] for r in rows]
    out = PrototypeHead(classes, heads[0].weight.shape[1], heads[0].norm, heads[0].tau)
    with torch.no_grad():
        for j, (_, h, i) in enumerate(rows):
            out.weight[j] = h.weight[i]
            out.bias[j] = h.bias[i]
    return out


@torch.no_grad()
def compute_prototypes(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    classes: Sequence[int],
    batch_size: int = 256,
) -> torch.Tensor:
    """``p_c = mean_{x in class c} feature_fn(x)`` for every ``c`` in ``classes`` (``[C, d]``)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    feats = torch.cat([feature_fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    out = []
    for c in classes:
        m = y == int(c)
        if not m.any():
            raise ValueError(f"class {c} has no samples to build its prototype from")
        out.append(feats[m].mean(0))
    return torch.stack(out)
