"""Stage-1 objective: target-embedding pretraining (official ``Train_Gen/train.py:train``, the branch without
``training_load_weight``, gjq100/ESMA commit eff2015; the loop is :func:`esma.trainer.pretrain_target_embeddings`).

The conditioning vectors (``E = TargetEmbedding(0..K-1)`` and every ResBlock's ``P_b = target_proj_b(E)``)
are trained so that their distance and cosine geometry matches the geometry of the class-mean logits
``F`` of the source model:

``L1 = sum_{Z in {E, P_1..P_B}} [ w_d SKL(Dist(F), Dist(Z)) + w_c SKL(Cos(F), Cos(Z)) + w_n ||Z||_F ]``

with ``SKL(A, B) = KL(softmax(B) || softmax(A)) + KL(softmax(A) || softmax(B))`` row-wise softmax,
averaged over all K*K entries (``nn.KLDivLoss()``'s default ``reduction='mean'`` in the official
``train.py:double_kl_div``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from papers_shared.attacks import symmetric_kl

from .generator import EsmaGenerator

__all__ = [
    "cosine_matrix",
    "distance_matrix",
    "stage1_loss",
    "structure_loss",
    "symmetric_kl_matrix",
]


def _check_rows(z: Tensor, name: str) -> None:
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"{name} must be a (K, d) tensor with K >= 2, got {getattr(z, 'shape', z)}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def distance_matrix(z: Tensor) -> Tensor:
    """``Dist(Z)_ab = ||z_a - z_b||_2`` (K, K); zero diagonal, zero gradient there."""
    return torch.cdist(z.unsqueeze(0), z.unsqueeze(0)).squeeze(0)


def cosine_matrix(z: Tensor) -> Tensor:
    """``Cos(Z)_ab = z_a . z_b / (||z_a|| ||z_b||)`` (K, K)."""
    zn = F.normalize(z, dim=1)
    return zn @ zn.T


def symmetric_kl_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``KL(softmax(b) || softmax(a)) + KL(softmax(a) || softmax(b))``, row-wise softmax, mean over
    all K*K entries."""
    return symmetric_kl(a, b, reduction="mean", dim=1)


def structure_loss(
    features: Tensor, embeddings: Tensor, cos_weight: float = 5.0, dist_weight: float = 1.0
) -> Tensor:
    """``dist_weight * SKL(Dist(F), Dist(E)) + cos_weight * SKL(Cos(F), Cos(E))`` (official weights 1 and 5)."""
    _check_rows(features, "features")
    _check_rows(embeddings, "embeddings")
    if features.shape[0] != embeddings.shape[0]:
        raise ValueError(f"features have {features.shape[0]} rows, embeddings {embeddings.shape[0]}")
    features = features.to(embeddings.dtype)
    d = symmetric_kl_matrix(distance_matrix(features), distance_matrix(embeddings))
    c = symmetric_kl_matrix(cosine_matrix(features), cosine_matrix(embeddings))
    return dist_weight * d + cos_weight * c


def stage1_loss(
    generator: EsmaGenerator,
    features: Tensor,
    cos_weight: float = 5.0,
    dist_weight: float = 1.0,
    norm_weight: float = 0.01,
) -> Tensor:
    """Full stage-1 objective over ``E`` and the 14 (default layout) ``P_b``."""
    e, projections = generator.conditioning_vectors()
    feats = features.to(e.device)
    loss = e.new_zeros(())
    for z in (e, *projections):
        loss = loss + structure_loss(feats, z, cos_weight, dist_weight) + norm_weight * torch.linalg.norm(z)
    return loss
