"""CAG2G, Contrast-Augmented G2G (paper: purpose; ours: loss and augmentations).

The G2G abstract (arXiv 2403.04140) adds a contrastive objective on G2G similarities that pulls the
features of one class together, to help the few-shot sessions. Ours: a supervised contrastive loss
(SupCon, Khosla et al. 2020, Eq. 2) whose similarity is the G2G score between the graphs of augmented
views (:func:`cag2g_loss`), and the views themselves (:func:`augment_batch`): random resized crop (area
in ``[scale_min, 1]``, aspect ratio in [3/4, 4/3]), horizontal flip and colour jitter, applied to a whole
batch at once with one affine grid (no per-image Python loop), as in the SupCon/SAVC recipes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from g2g_fscil.interaction import g2g_similarity

__all__ = ["augment_batch", "cag2g_loss"]


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    scale_min: float = 0.6,
    hflip: bool = True,
    jitter: float = 0.4,
) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects [B, C, H, W], got {tuple(x.shape)}")
    b, c = x.shape[:2]
    dev, dt = x.device, x.dtype

    def u(lo: float, hi: float, n: int = b) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(dev, dt)

    area = u(scale_min, 1.0)
    log_r = u(math.log(3 / 4), math.log(4 / 3))
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    tx = (u(-1.0, 1.0)) * (1 - w)
    ty = (u(-1.0, 1.0)) * (1 - h)
    flip = torch.ones(b, device=dev, dtype=dt)
    if hflip:
        flip = torch.where(u(0.0, 1.0) < 0.5, -flip, flip)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=dt)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter > 0:
        bright = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        out = out * bright
        contrast = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean
        if c == 3:
            sat = u(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
            gray = (0.299 * out[:, :1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3]).expand_as(out)
            out = (out - gray) * sat + gray
        out = out.clamp(0.0, 1.0)
    return out


def cag2g_loss(
    z_views: torch.Tensor,
    a_views: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.1,
    alpha: float = 0.5,
    node_match: str = "aligned",
    edge_sim: str = "cosine",
) -> torch.Tensor:
    """SupCon on G2G similarities between the ``N`` sample graphs (all views stacked; ours).

    ``-mean_a (1/|P(a)|) sum_{p in P(a)} log softmax_{k != a}(S(a, .)/tau)_p`` with ``S`` the G2G score of
    :func:`g2g_fscil.interaction.g2g_similarity` and ``P(a)`` the other graphs with ``a``'s label; anchors
    without positives are skipped (they still act as negatives). Returns 0 (with a graph) when no anchor
    has a positive.
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
