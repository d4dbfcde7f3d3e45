"""Stage-2 objective: easy-sample matching (official ``Train_Gen/Trainer.py:GeneratorTrainer.forward``,
gjq100/ESMA commit eff2015; the paper's matching of the source model's logits on the adversarial image to
the target's easy-sample anchor).

``L2 = (1/B) sum_j [y_j != k_j] sum_c SmoothL1_beta(z_jc - m_{k_j c})`` with ``z_j`` the source logits of
``clip(Pi_eps(S(G(x_j, k_j)); x_j))`` and ``m_k`` the anchor of target ``k``; rows whose clean class
already is the target are masked out but still count in ``B``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from papers_shared.attacks import smooth_l1_match

__all__ = ["esma_matching_loss"]


def esma_matching_loss(
    logits: Tensor,
    anchors: Tensor,
    target_idx: Tensor,
    source_idx: Tensor | None = None,
    beta: float = 1.0,
) -> Tensor:
    """``(1/B) sum_j [source_j != target_j] sum_c SmoothL1_beta(z_jc - anchors[target_j, c])``.

    ``source_idx`` are the target indices of the clean images' classes (-1 for classes outside the
    target set, never masked); ``None`` masks nothing. Masked rows still count in ``B``.
    """
    if logits.ndim != 2 or anchors.ndim != 2 or logits.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"logits (B, C) and anchors (K, C) must share C, got {tuple(logits.shape)} and {tuple(anchors.shape)}"
        )
    if target_idx.ndim != 1 or target_idx.shape[0] != logits.shape[0]:
        raise ValueError(f"target_idx must have shape ({logits.shape[0]},)")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values")
    target_idx = target_idx.to(logits.device).long()
    mask = None
    if source_idx is not None:
        if source_idx.shape != target_idx.shape:
            raise ValueError("source_idx must have the same shape as target_idx")
        mask = source_idx.to(logits.device) != target_idx
    return smooth_l1_match(logits, anchors.to(logits.device)[target_idx], beta=beta, mask=mask)
