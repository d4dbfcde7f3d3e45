"""Stage 1: target-embedding pretraining (spec §3.4).

The conditioning vectors (``E = TargetEmbedding(0..K-1)`` and every ResBlock's ``P_b = target_proj_b(E)``)
are trained so that their distance and cosine geometry matches the geometry of the class-mean logits
``F`` of the source model:

``L1 = sum_{Z in {E, P_1..P_B}} [ w_d SKL(Dist(F), Dist(Z)) + w_c SKL(Cos(F), Cos(Z)) + w_n ||Z||_F ]``

with ``SKL(A, B) = KL(softmax(B) || softmax(A)) + KL(softmax(A) || softmax(B))`` row-wise softmax,
averaged over all K*K entries (``KLDivLoss`` ``reduction='mean'``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from papers_shared.attacks import symmetric_kl

from .generator import EsmaGenerator

__all__ = [
    "cosine_matrix",
    "distance_matrix",
    "pretrain_target_embeddings",
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
    """``dist_weight * SKL(Dist(F), Dist(E)) + cos_weight * SKL(Cos(F), Cos(E))`` (spec §3.4 item 4)."""
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


def pretrain_target_embeddings(
    generator: EsmaGenerator,
    features: Tensor,
    steps: int = 15000,
    lr: float = 1.5e-5,
    weight_decay: float = 5e-5,
    norm_weight: float = 0.01,
    cos_weight: float = 5.0,
    dist_weight: float = 1.0,
    accumulate_grads: bool = False,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = False,
) -> list[float]:
    """Train only the embedding and the ``target_proj`` layers with AdamW (full batch of K rows).

    ``accumulate_grads=True`` reproduces the official loop, which never zeroes gradients (the gradient
    fed to AdamW at step s is the sum of all gradients so far). Returns the loss per step.
    """
    _check_rows(features, "features")
    if features.shape[0] != generator.num_targets:
        raise ValueError(f"features have {features.shape[0]} rows for {generator.num_targets} targets")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = list(generator.conditioning_parameters())
    frozen = [p for p in generator.backbone_parameters()]
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="stage 1", unit="step")
    was = generator.training
    generator.train()
    try:
        opt.zero_grad(set_to_none=True)
        for step in it:
            if not accumulate_grads:
                opt.zero_grad(set_to_none=True)
            loss = stage1_loss(generator, features, cos_weight, dist_weight, norm_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage-1 loss is not finite at step {step}: {float(loss)}")
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if callback is not None:
                callback(step, history[-1])
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)
        generator.train(was)
    return history
