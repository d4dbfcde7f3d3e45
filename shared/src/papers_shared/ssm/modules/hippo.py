"""HiPPO-LegS matrices and the eigen-decomposition of their normal part (S4 DPLR and S5 initialisation).

Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured State Spaces" (S4), Sec. 3 and
Appendix C (the LegS matrix and its normal-plus-low-rank form); Smith et al. 2023, "Simplified State
Space Layers for Sequence Modeling" (S5), Sec. 4.1 (initialising with the eigenvalues of the normal
part, HiPPO-N).
"""

from __future__ import annotations

import torch

__all__ = ["hippo_legs", "hippo_normal_eig"]


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS ``A`` (``N x N``), its rank-1 correction ``P`` (``A + P P^T`` is normal) and ``B``."""
    n = torch.arange(N, dtype=torch.float64)
    s = torch.sqrt(2 * n + 1)
    A = -torch.tril(s[:, None] * s[None, :], -1) - torch.diag(n + 1)
    P = torch.sqrt(n + 0.5)
    return A, P, s.clone()


def hippo_normal_eig(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the normal part ``S = A + P P^T = -I/2 + skew`` of HiPPO-LegS.

    Returns ``(Lambda, V)`` with ``S = V diag(Lambda) V^H`` (``V`` unitary), sorted so that the first
    ``N/2`` eigenvalues have positive imaginary part (one of each conjugate pair).
    """
    A, P, _ = hippo_legs(N)
    S = A + P[:, None] * P[None, :]
    skew = S + 0.5 * torch.eye(N, dtype=torch.float64)
    evals, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # skew = V diag(i e) V^H
    order = torch.argsort(-evals)  # positive imaginary parts first
    lam = torch.complex(torch.full((N,), -0.5, dtype=torch.float64), evals[order])
    return lam, V[:, order]
