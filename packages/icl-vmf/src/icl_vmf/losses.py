"""The CL-vMF objective on a Set2Set similarity matrix (spec §3.7).

``S[i, j] = cos(z_i, m_{y_j})``: sample ``i`` against the memory key of sample ``j``'s label. With a vMF
class-conditional ``p(z | y) ∝ exp(m_y^T z / kappa)`` (code-kappa is a temperature, kappa_vMF = 1/kappa)
the posterior is a softmax of scaled cosines; the loss keeps the diagonal as the positive and every
different-label column (once per occurrence) as a negative.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cl_vmf_loss", "vmf_margin_regularizer", "vmf_set2set_loss"]


def _check(S: torch.Tensor, y: torch.Tensor) -> None:
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"S must be a square n x n matrix, got shape {tuple(S.shape)}")
    if not S.is_floating_point():
        raise TypeError(f"S must be floating point, got {S.dtype}")
    if y.ndim != 1 or y.shape[0] != S.shape[0]:
        raise ValueError(f"y must hold one label per row of S ({S.shape[0]}), got shape {tuple(y.shape)}")
    if y.is_floating_point():
        raise TypeError(f"y must hold integer labels, got {y.dtype}")
    if S.shape[0] == 0:
        raise ValueError("S is empty")


def vmf_set2set_loss(
    S: torch.Tensor, y: torch.Tensor, kappa: float = 1.0, gamma: float = 1e-6
) -> torch.Tensor:
    """``L_vMF = mean_i -log( e^{S_ii/k} / (e^{S_ii/k} + sum_{j: y_j != y_i} e^{S_ij/k} + gamma) )``.

    Same-label off-diagonal entries are dropped; a different label present ``r`` times contributes
    ``r`` terms. Computed in log space (``logsumexp``), which equals the code's ratio form.
    """
    _check(S, y)
    if kappa <= 0 or gamma < 0:
        raise ValueError(f"need kappa > 0 and gamma >= 0, got kappa={kappa}, gamma={gamma}")
    logits = S / kappa
    n = S.shape[0]
    same = y.unsqueeze(0) == y.unsqueeze(1)
    keep = ~same | torch.eye(n, dtype=torch.bool, device=S.device)
    masked = logits.masked_fill(~keep, float("-inf"))
    log_gamma = torch.full(
        (n, 1), math.log(gamma) if gamma > 0 else float("-inf"), dtype=S.dtype, device=S.device
    )
    log_den = torch.logsumexp(torch.cat([masked, log_gamma], dim=1), dim=1)
    return (log_den - logits.diagonal()).mean()


def vmf_margin_regularizer(S: torch.Tensor, y: torch.Tensor, delta: float = 0.01) -> torch.Tensor:
    """``L_reg = (1/n)[ sum_{y_i = y_j} relu(|S_ij - 1| - delta) + sum_{y_i != y_j} relu(|S_ij + 1| - delta) ]``.

    Raw cosines (no kappa), every same-label pair including the diagonal, divided by ``n`` (not by the
    number of pairs).
    """
    _check(S, y)
    same = y.unsqueeze(0) == y.unsqueeze(1)
    pos = torch.relu((S - 1).abs() - delta)
    neg = torch.relu((S + 1).abs() - delta)
    return torch.where(same, pos, neg).sum() / S.shape[0]


def cl_vmf_loss(
    S: torch.Tensor,
    y: torch.Tensor,
    kappa: float = 1.0,
    lam: float = 0.1,
    delta: float = 0.01,
    gamma: float = 1e-6,
) -> torch.Tensor:
    """``L = L_vMF + lam * L_reg`` (spec §3.7)."""
    loss = vmf_set2set_loss(S, y, kappa, gamma)
    if lam:
        loss = loss + lam * vmf_margin_regularizer(S, y, delta)
    return loss
