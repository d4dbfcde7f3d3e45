"""Local-feature graphs (G2G input graphs; paper: concept, ours: construction).

A feature map ``F in R^{B x D x H x W}`` becomes ``M = H*W`` local features (optionally after an adaptive
average pool to ``r x r``); the projection ``g_phi`` is applied to each node (a 1x1 conv sharing the FC
weights) and ``rho`` (tanh / identity / sign) gives the graph nodes ``Z``. Edges are cosine similarities
between nodes, with the diagonal excluded (set to 0 and never read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "check_finite",
    "collapse_index",
    "cosine_adjacency",
    "local_features",
    "local_nodes",
    "offdiag_mask",
    "offdiag_vec",
    "represent",
    "shared_energy",
]

_EPS = 1e-8


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def represent(v: torch.Tensor, kind: str = "tanh") -> torch.Tensor:
    """The representation ``rho`` of C-FSCIL: ``tanh``, ``real`` (identity) or ``bipolar`` (sign)."""
    if kind == "tanh":
        return torch.tanh(v)
    if kind == "real":
        return v
    if kind == "bipolar":
        return torch.sign(v)
    raise ValueError(f"unknown representation {kind!r}; use tanh, real or bipolar")


def local_features(fmap: torch.Tensor, pool: int | None = None) -> torch.Tensor:
    """``[B, D, H, W] -> [B, M, D]`` (row-major positions), after an optional ``pool x pool`` average."""
    if fmap.ndim != 4:
        raise ValueError(f"feature map must be [B, D, H, W], got shape {tuple(fmap.shape)}")
    if pool is not None and (fmap.shape[-2] != pool or fmap.shape[-1] != pool):
        fmap = F.adaptive_avg_pool2d(fmap, pool)
    return fmap.flatten(2).transpose(1, 2)


def local_nodes(f_local: torch.Tensor, proj: torch.nn.Module, representation: str = "tanh") -> torch.Tensor:
    """``Z = rho(g_phi(f_i))`` for every local feature: ``[..., M, D] -> [..., M, d]``."""
    return represent(proj(f_local), representation)


def offdiag_mask(m: int, device=None) -> torch.Tensor:
    return ~torch.eye(m, dtype=torch.bool, device=device)


def cosine_adjacency(z: torch.Tensor, knn: int | None = None) -> torch.Tensor:
    """``A_ij = cos(z_i, z_j)`` for ``i != j`` (diagonal 0), ``[..., M, d] -> [..., M, M]``.

    ``knn``: keep the ``k`` largest off-diagonal entries of each row, then symmetrise (an edge survives if
    either endpoint keeps it); the others are set to 0.
    """
    if z.ndim < 2:
        raise ValueError(f"nodes must be [..., M, d], got shape {tuple(z.shape)}")
    zn = F.normalize(z, dim=-1, eps=_EPS)
    a = zn @ zn.transpose(-1, -2)
    m = a.shape[-1]
    off = offdiag_mask(m, a.device)
    a = a * off
    if knn is not None and m > 1:
        k = min(int(knn), m - 1)
        scores = a.masked_fill(~off, float("-inf"))
        idx = scores.topk(k, dim=-1).indices
        keep = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, idx, True)
        keep = keep | keep.transpose(-1, -2)
        a = a * keep
    return a


def offdiag_vec(a: torch.Tensor) -> torch.Tensor:
    """The ``M(M-1)`` off-diagonal entries of ``[..., M, M]`` as ``[..., M(M-1)]``."""
    m = a.shape[-1]
    if a.shape[-2] != m:
        raise ValueError(f"adjacency must be square, got shape {tuple(a.shape)}")
    return a[..., offdiag_mask(m, a.device)]


def collapse_index(a: torch.Tensor) -> float:
    """Mean off-diagonal ``A_ij`` (ours, the LGP diagnostic): 1.0 means every local feature points the same way."""
    if a.shape[-1] < 2:
        return float("nan")
    return float(offdiag_vec(a).mean())


def shared_energy(z: torch.Tensor) -> float:
    """``||mean_i z_i||^2 / mean_i ||z_i||^2`` averaged over the batch (ours, a diagnostic): the share of
    the nodes' energy in their common component. 1 = collapsed nodes; 0 = nodes that sum to zero."""
    num = z.mean(-2).pow(2).sum(-1)
    den = z.pow(2).sum(-1).mean(-1).clamp_min(1e-12)
    return float((num / den).mean())
