"""The CL-vMF objective on a Set2Set similarity matrix.

``S[i, j] = cos(z_i, m_{y_j})``: sample ``i`` against the memory key of sample ``j``'s label (official code:
``backbone/cvt_online.py:Brain_Net_Vit.forward`` builds it, ``models/onlinevt.py:Onlinevt.Brain_co_loss_vit``
/ ``vmf_loss`` / ``margin_loss`` score it; commit 8c8ad10). With a vMF class-conditional
``p(z | y) ∝ exp(m_y^T z / kappa)`` (the code's kappa is a temperature, kappa_vMF = 1/kappa; paper Sec. 3,
"CL-vMF") the posterior is a softmax of scaled cosines; the loss keeps the diagonal as the positive and
every different-label column (once per occurrence) as a negative.

Every function also takes a *block of rows* of a larger matrix: ``S`` of shape ``[m, n]`` holds rows
``rows`` (their own columns) of the ``n x n`` matrix. The result is that block's share of the full loss
(its rows' terms divided by ``n``), so the shares of a partition of the rows sum to the full loss; this is
how several processes split one batch (:mod:`icl_vmf.trainer`). ``rows=None`` means the whole square matrix.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cl_vmf_loss", "vmf_margin_regularizer", "vmf_set2set_loss"]


def _check(S: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    if S.ndim != 2:
        raise ValueError(f"S must be a 2-D matrix, got shape {tuple(S.shape)}")
    if not S.is_floating_point():
        raise TypeError(f"S must be floating point, got {S.dtype}")
    if y.ndim != 1 or y.shape[0] != S.shape[1]:
        raise ValueError(f"y must hold one label per column of S ({S.shape[1]}), got shape {tuple(y.shape)}")
    if y.is_floating_point():
        raise TypeError(f"y must hold integer labels, got {y.dtype}")
    if S.shape[1] == 0:
        raise ValueError("S is empty")
    if rows is None:
        if S.shape[0] != S.shape[1]:
            raise ValueError(f"a block of rows of S ({tuple(S.shape)}) needs `rows` (each row's own column)")
        return torch.arange(S.shape[0], device=S.device)
    rows = torch.as_tensor(rows, device=S.device).long()
    if rows.shape != (S.shape[0],):
        raise ValueError(
            f"rows must give one column index per row of S ({S.shape[0]}), got {tuple(rows.shape)}"
        )
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= S.shape[1]):
        raise ValueError(f"rows must index columns of S (0..{S.shape[1] - 1})")
    return rows


def vmf_set2set_loss(
    S: torch.Tensor,
    y: torch.Tensor,
    kappa: float = 1.0,
    gamma: float = 1e-6,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_vMF = (1/n) sum_i -log( e^{S_ii/k} / (e^{S_ii/k} + sum_{j: y_j != y_i} e^{S_ij/k} + gamma) )``.

    Same-label off-diagonal entries are dropped; a different label present ``r`` times contributes
    ``r`` terms. Computed in log space (``logsumexp``), which equals the code's ratio form
    (``Onlinevt.vmf_loss``).
    """
    rows = _check(S, y, rows)
    if kappa <= 0 or gamma < 0:
        raise ValueError(f"need kappa > 0 and gamma >= 0, got kappa={kappa}, gamma={gamma}")
    m, n = S.shape
    logits = S / kappa
    y_row = y[rows]
    same = y_row.unsqueeze(1) == y.unsqueeze(0)
    own = torch.zeros(m, n, dtype=torch.bool, device=S.device)
    own[torch.arange(m, device=S.device), rows] = True
    masked = logits.masked_fill(same & ~own, float("-inf"))
    log_gamma = torch.full(
        (m, 1), math.log(gamma) if gamma > 0 else float("-inf"), dtype=S.dtype, device=S.device
    )
    log_den = torch.logsumexp(torch.cat([masked, log_gamma], dim=1), dim=1)
    terms = log_den - logits.gather(1, rows.unsqueeze(1)).squeeze(1)
    return terms.mean() if m == n else terms.sum() / n


def vmf_margin_regularizer(
    S: torch.Tensor, y: torch.Tensor, delta: float = 0.01, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``L_reg = (1/n)[ sum_{y_i = y_j} relu(|S_ij - 1| - delta) + sum_{y_i != y_j} relu(|S_ij + 1| - delta) ]``.

    Raw cosines (no kappa), every same-label pair including the diagonal, divided by ``n`` (not by the
    number of pairs), as ``Onlinevt.margin_loss`` and ``Brain_co_loss_vit``.
    """
    rows = _check(S, y, rows)
    same = y[rows].unsqueeze(1) == y.unsqueeze(0)
    pos = torch.relu((S - 1).abs() - delta)
    neg = torch.relu((S + 1).abs() - delta)
    return torch.where(same, pos, neg).sum() / S.shape[1]


def cl_vmf_loss(
    S: torch.Tensor,
    y: torch.Tensor,
    kappa: float = 1.0,
    lam: float = 0.1,
    delta: float = 0.01,
    gamma: float = 1e-6,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L = L_vMF + lam * L_reg`` (``Onlinevt.Brain_co_loss_vit``)."""
    loss = vmf_set2set_loss(S, y, kappa, gamma, rows)
    if lam:
        loss = loss + lam * vmf_margin_regularizer(S, y, delta, rows)
    return loss
