"""GKIM, graph knowledge interaction: distillation between the GNN head and MRaM (paper abstract and Fig. 1;
official ``train.py:train`` loss and ``utils/base.py:DistillationLoss``, commit b8a41c4).

``L = w_kl·T²·KL(p^G ‖ p^M) + w_kl·T²·KL(p^M ‖ p^G) + w_ce·CE_ls(ℓ^G, y)`` with ``p = softmax(ℓ/T)``,
batch-mean KL and no ``detach`` (``mode="bidirectional"``, the code). One-way modes detach the teacher:
``"gnn_to_mram"`` keeps only ``KL(p^G.detach() ‖ p^M)``, ``"mram_to_gnn"`` only
``KL(p^M.detach() ‖ p^G)``. ``"none"`` drops the distillation and trains MRaM by ``CE_ls(ℓ^M, y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mecoin.config import DISTILL_MODES

__all__ = ["gkim_loss", "kl_divergence", "symmetric_kl"]


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Batch-mean ``KL(softmax(ℓ_p/T) ‖ softmax(ℓ_q/T)) = mean_b Σ_k p_k (log p_k − log q_k)``."""
    log_p = F.log_softmax(logits_p / temperature, dim=-1)
    log_q = F.log_softmax(logits_q / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(p_a ‖ p_b) + KL(p_b ‖ p_a)``."""
    return kl_divergence(logits_a, logits_b, temperature) + kl_divergence(logits_b, logits_a, temperature)


def _check_logits(logits_gnn: torch.Tensor, logits_mram: torch.Tensor, y: torch.Tensor) -> None:
    if logits_gnn.ndim != 2 or logits_gnn.shape != logits_mram.shape:
        raise ValueError(
            f"logits must both be [n, K]; got {tuple(logits_gnn.shape)} and {tuple(logits_mram.shape)}"
        )
    if y.ndim != 1 or y.shape[0] != logits_gnn.shape[0]:
        raise ValueError(f"labels must be [n={logits_gnn.shape[0]}], got {tuple(y.shape)}")
    if y.dtype.is_floating_point:
        raise ValueError(f"labels must be integer class ids, got {y.dtype}")
    if not (torch.isfinite(logits_gnn).all() and torch.isfinite(logits_mram).all()):
        raise ValueError("logits contain NaN or inf")


def gkim_loss(
    logits_gnn: torch.Tensor,
    logits_mram: torch.Tensor,
    y: torch.Tensor,
    mode: str = "bidirectional",
    kl_weight: float = 0.5,
    ce_weight: float = 1.0,
    T: float = 1.0,
    label_smoothing: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GKIM loss (official ``train.py:train``; the one-way modes and ``none`` are ours). Returns ``(loss, parts)`` with the float value of each term."""
    if mode not in DISTILL_MODES:
        raise ValueError(f"distill mode {mode!r} is not one of {list(DISTILL_MODES)}")
    _check_logits(logits_gnn, logits_mram, y)
    ce_gnn = F.cross_entropy(logits_gnn, y, label_smoothing=label_smoothing)
    parts: dict[str, torch.Tensor] = {"ce_gnn": ce_gnn}
    scale = kl_weight * T * T
    if mode == "bidirectional":
        parts["kl_gnn_mram"] = scale * kl_divergence(logits_gnn, logits_mram, T)
        parts["kl_mram_gnn"] = scale * kl_divergence(logits_mram, logits_gnn, T)
    elif mode == "gnn_to_mram":
        parts["kl_gnn_mram"] = scale * kl_divergence(logits_gnn.detach(), logits_mram, T)
    elif mode == "mram_to_gnn":
        parts["kl_mram_gnn"] = scale * kl_divergence(logits_mram.detach(), logits_gnn, T)
    else:
        parts["ce_mram"] = F.cross_entropy(logits_mram, y, label_smoothing=label_smoothing)
    loss = ce_weight * parts["ce_gnn"] + sum(v for k, v in parts.items() if k.startswith("kl"))
    if "ce_mram" in parts:
        loss = loss + ce_weight * parts["ce_mram"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}
