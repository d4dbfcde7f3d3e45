"""Training objectives (spec §3.2, §3.4, §3.5).

* ``episode_bce_loss``: BCE between the normalised weightings and the one-hot labels (C-FSCIL meta-training).
* ``lgp_loss``: Local Graph Preservation, ``preserve`` (match the backbone's local relation graph) or
  ``anti_collapse`` (hinge on off-diagonal similarities) [ours].
* ``cag2g_loss``: supervised contrastive loss whose similarity is the G2G score between sample graphs [ours].
* ``cosine_align_loss``: C-FSCIL FC retraining, ``-mean cos(pred, target)``.
* ``nudging_loss``: C-FSCIL prototype nudging (pairwise ``exp(4s) + exp(-4s) - 2`` + deviation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from g2g_fscil.graphs import cosine_adjacency, offdiag_mask, offdiag_vec
from g2g_fscil.interaction import g2g_similarity

__all__ = ["cag2g_loss", "cosine_align_loss", "episode_bce_loss", "lgp_loss", "nudging_loss"]


def episode_bce_loss(w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``BCE(w, onehot(labels))`` averaged over all entries; ``w`` in [0, 1] (normalised weightings)."""
    if w.ndim != 2 or labels.ndim != 1 or labels.shape[0] != w.shape[0]:
        raise ValueError(f"expected w [B, C] and labels [B], got {tuple(w.shape)} and {tuple(labels.shape)}")
    onehot = F.one_hot(labels.long(), w.shape[1]).to(w.dtype)
    return F.binary_cross_entropy(w.clamp(1e-7, 1 - 1e-7), onehot)


def lgp_loss(
    f_local: torch.Tensor,
    z: torch.Tensor,
    mode: str = "preserve",
    detach_backbone: bool = True,
    margin: float = 0.5,
    knn: int | None = None,
) -> torch.Tensor:
    """LGP (spec §3.4). ``f_local [B, M, D]`` backbone local features, ``z [B, M, d]`` graph nodes.

    ``preserve``: ``mean_x mean_{i != j} (A_ij - B_ij)^2`` with ``B = cos-adjacency(f)`` (stop-gradient when
    ``detach_backbone``); ``anti_collapse``: ``mean_x mean_{i != j} relu(A_ij - margin)``.
    """
    if f_local.ndim != 3 or z.ndim != 3 or f_local.shape[:2] != z.shape[:2]:
        raise ValueError(
            f"expected f [B, M, D] and z [B, M, d], got {tuple(f_local.shape)}, {tuple(z.shape)}"
        )
    m = z.shape[1]
    if m < 2:
        return z.sum() * 0.0
    a = offdiag_vec(cosine_adjacency(z, knn))
    if mode == "preserve":
        f = f_local.detach() if detach_backbone else f_local
        b = offdiag_vec(cosine_adjacency(f, knn))
        return (a - b).pow(2).mean()
    if mode == "anti_collapse":
        return torch.relu(a - margin).mean()
    raise ValueError(f"lgp mode must be 'preserve' or 'anti_collapse', got {mode!r}")


def cag2g_loss(
    z_views: torch.Tensor,
    a_views: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.1,
    alpha: float = 0.5,
    node_match: str = "aligned",
    edge_sim: str = "cosine",
) -> torch.Tensor:
    """SupCon on G2G similarities between the ``N`` sample graphs (all views stacked, spec §3.5).

    ``-mean_a (1/|P(a)|) sum_{p in P(a)} log softmax_{k != a}(S(a, .)/tau)_p``; anchors without positives
    are skipped (they still act as negatives). Returns 0 (with a graph) when no anchor has a positive.
    """
    n = z_views.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must be [{n}], got {tuple(labels.shape)}")
    if tau <= 0:
        raise ValueError("tau must be > 0")
    s = g2g_similarity(z_views, a_views, z_views, a_views, alpha, node_match, edge_sim) / tau
    self_mask = torch.eye(n, dtype=torch.bool, device=s.device)
    logits = s.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return s.sum() * 0.0
    mean_log = (log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / n_pos[has]
    return -mean_log.mean()


def cosine_align_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean cos(pred, target)`` over the last dimension (C-FSCIL ``myCosineLoss`` after ``rho``)."""
    return -F.cosine_similarity(pred, target, dim=-1, eps=1e-8).mean()


def nudging_loss(p: torch.Tensor, p0: torch.Tensor, deviation_weight: float = 1.0) -> torch.Tensor:
    """Prototype nudging: ``mean_{i != j} exp(4 s_ij) + exp(-4 s_ij) - 2`` over prototype pairs plus
    ``deviation_weight * mean(1 - cos(p, p0))``. ``p``: ``[..., C, d]`` (leading dims are independent sets,
    e.g. node positions)."""
    pn = F.normalize(p, dim=-1, eps=1e-8)
    s = pn @ pn.transpose(-1, -2)
    c = s.shape[-1]
    if c < 2:
        pair = p.sum() * 0.0
    else:
        off = s[..., offdiag_mask(c, s.device)]
        pair = (torch.exp(4 * off) + torch.exp(-4 * off) - 2).mean()
    dev = (1 - F.cosine_similarity(p, p0, dim=-1, eps=1e-8)).mean()
    return pair + deviation_weight * dev
