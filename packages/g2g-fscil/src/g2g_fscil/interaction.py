"""Memory read-out: V2V and G2G similarities, sharpening and normalisation.

V2V (C-FSCIL ``model.py:KeyValueNetwork.forward``, ``torch_blocks.py:cosine_similarity_multi``):
``sim_c = cos(rho(q), rho(p_c))``. G2G (paper: concept, Sec. III of arXiv 2403.04140; ours: equations):
``S = alpha * S_node + (1 - alpha) * S_edge`` between an input graph (nodes ``Z [M, d]``, adjacency
``A [M, M]``) and a prototype graph. Sharpening and normalisation follow C-FSCIL (``softabs``,
``normalize_weightings``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from g2g_fscil.graphs import offdiag_vec, represent

__all__ = [
    "PreparedGraphs",
    "edge_similarity",
    "g2g_similarity",
    "g2g_similarity_prepared",
    "prepare_graphs",
    "node_similarity",
    "normalise",
    "sharpen",
    "softabs",
    "softrelu",
    "v2v_similarity",
    "weightings",
]

_EPS = 1e-8


def v2v_similarity(q: torch.Tensor, p: torch.Tensor, representation: str = "tanh") -> torch.Tensor:
    """``cos(rho(q_b), rho(p_c))`` -> ``[B, C]`` (C-FSCIL ``cosine_similarity_multi``)."""
    if q.ndim != 2 or p.ndim != 2 or q.shape[-1] != p.shape[-1]:
        raise ValueError(
            f"v2v_similarity expects [B, d] and [C, d], got {tuple(q.shape)} and {tuple(p.shape)}"
        )
    qn = F.normalize(represent(q, representation), dim=-1, eps=_EPS)
    pn = F.normalize(represent(p, representation), dim=-1, eps=_EPS)
    return qn @ pn.T


def node_similarity(z: torch.Tensor, zc: torch.Tensor, node_match: str = "aligned") -> torch.Tensor:
    """``S_node``: ``aligned`` = ``(1/M) sum_i cos(z_i, Zc_i)``; ``soft`` = ``(1/M) sum_i max_j cos(z_i, Zc_j)``."""
    zn = F.normalize(z, dim=-1, eps=_EPS)
    cn = F.normalize(zc, dim=-1, eps=_EPS)
    if node_match == "aligned":
        # one [B, M*d] x [M*d, C] matmul: sum over nodes of per-node cosines
        return (zn.flatten(1) @ cn.flatten(1).T) / z.shape[1]
    if node_match == "soft":
        return torch.einsum("bid,cjd->bcij", zn, cn).amax(dim=-1).mean(dim=-1)
    raise ValueError(f"node_match must be 'aligned' or 'soft', got {node_match!r}")


def edge_similarity(a: torch.Tensor, ac: torch.Tensor, edge_sim: str = "cosine") -> torch.Tensor:
    """``S_edge``: cosine of the off-diagonal entries, or ``1 - ||A - Ac||_F^2 / (4 M (M-1))``."""
    va, vc = offdiag_vec(a), offdiag_vec(ac)
    if edge_sim == "cosine":
        return F.normalize(va, dim=-1, eps=_EPS) @ F.normalize(vc, dim=-1, eps=_EPS).T
    if edge_sim == "frobenius":
        m = a.shape[-1]
        d2 = (va.pow(2).sum(-1)[:, None] + vc.pow(2).sum(-1)[None, :] - 2 * va @ vc.T).clamp_min(0)
        return 1.0 - d2 / (4.0 * m * (m - 1))
    raise ValueError(f"edge_sim must be 'cosine' or 'frobenius', got {edge_sim!r}")


def g2g_similarity(
    z: torch.Tensor,
    a: torch.Tensor,
    zc: torch.Tensor,
    ac: torch.Tensor,
    alpha: float = 0.5,
    node_match: str = "aligned",
    edge_sim: str = "cosine",
) -> torch.Tensor:
    """``S = alpha * S_node + (1 - alpha) * S_edge`` between input graphs ``(z [B,M,d], a [B,M,M])`` and
    prototype graphs ``(zc [C,M,d], ac [C,M,M])`` -> ``[B, C]`` (ours).

    With ``M = 1`` there are no edges and ``alpha`` is forced to 1, so G2G equals V2V on the nodes.
    """
    if z.ndim != 3 or zc.ndim != 3:
        raise ValueError(f"nodes must be [B, M, d] and [C, M, d], got {tuple(z.shape)} and {tuple(zc.shape)}")
    if z.shape[-1] != zc.shape[-1]:
        raise ValueError(f"node dims differ: {z.shape[-1]} vs {zc.shape[-1]}")
    if node_match == "aligned" and z.shape[1] != zc.shape[1]:
        raise ValueError(f"aligned matching needs the same M, got {z.shape[1]} and {zc.shape[1]}")
    s_node = node_similarity(z, zc, node_match)
    m = z.shape[1]
    if m < 2 or alpha >= 1.0:
        return s_node
    if a.shape[-1] != ac.shape[-1]:
        raise ValueError(f"edge similarity needs the same M, got {a.shape[-1]} and {ac.shape[-1]}")
    return alpha * s_node + (1.0 - alpha) * edge_similarity(a, ac, edge_sim)


@dataclass(frozen=True)
class PreparedGraphs:
    """Prototype graphs in the form of the default read-out (aligned nodes, cosine edges), computed once
    per memory state: l2-normalised nodes flattened and transposed to ``[M*d, C]`` and scaled by
    ``alpha / M``, l2-normalised off-diagonal edge vectors ``[M(M-1), C]`` scaled by ``1 - alpha`` (``None``
    without an edge term). A query batch then costs one matrix product per term (ours)."""

    nodes_t: torch.Tensor
    edges_t: torch.Tensor | None
    alpha: float
    num_nodes: int


def prepare_graphs(zc: torch.Tensor, ac: torch.Tensor, alpha: float = 0.5) -> PreparedGraphs:
    m = zc.shape[1]
    edge = m >= 2 and alpha < 1.0
    node_w = (alpha if edge else 1.0) / m
    nodes_t = (F.normalize(zc, dim=-1, eps=_EPS).flatten(1) * node_w).T.contiguous()
    edges_t = None
    if edge:
        edges_t = (F.normalize(offdiag_vec(ac), dim=-1, eps=_EPS) * (1.0 - alpha)).T.contiguous()
    return PreparedGraphs(nodes_t, edges_t, float(alpha), m)


def g2g_similarity_prepared(z: torch.Tensor, a: torch.Tensor, prep: PreparedGraphs) -> torch.Tensor:
    """:func:`g2g_similarity` for ``node_match="aligned"``, ``edge_sim="cosine"`` against prepared
    prototypes (same result; see :class:`PreparedGraphs`)."""
    m = z.shape[1]
    if m != prep.num_nodes or prep.nodes_t.shape[0] != m * z.shape[2]:
        raise ValueError(
            f"prepared prototypes have {prep.num_nodes} nodes and {prep.nodes_t.shape[0]} node features, "
            f"queries {m} and {m * z.shape[2]}"
        )
    s = F.normalize(z, dim=-1, eps=_EPS).flatten(1) @ prep.nodes_t
    if prep.edges_t is None:
        return s
    return torch.addmm(s, F.normalize(offdiag_vec(a), dim=-1, eps=_EPS), prep.edges_t)


def softabs(x: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """``sigma(beta (x - 0.5)) + sigma(beta (-x - 0.5))`` (C-FSCIL)."""
    return torch.sigmoid(beta * (x - 0.5)) + torch.sigmoid(beta * (-x - 0.5))


def softrelu(x: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    return torch.sigmoid(beta * (x - 0.5))


def sharpen(x: torch.Tensor, kind: str = "softabs", beta: float = 10.0) -> torch.Tensor:
    """Sharpening activation: softabs, softrelu, abs, relu, exp, scaledexp (``exp(beta x)``) or none."""
    if kind == "softabs":
        return softabs(x, beta)
    if kind == "softrelu":
        return softrelu(x, beta)
    if kind == "abs":
        return x.abs()
    if kind == "relu":
        return torch.relu(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "scaledexp":
        return torch.exp(beta * x)
    if kind == "none":
        return x
    raise ValueError(f"unknown sharpening {kind!r}")


def normalise(a: torch.Tensor) -> torch.Tensor:
    """``w_c = a_c / sum_c' a_c'`` (C-FSCIL ``normalize_weightings``)."""
    return a / a.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def weightings(sim: torch.Tensor, kind: str, beta: float, normalize: bool = True) -> torch.Tensor:
    a = sharpen(sim, kind, beta)
    return normalise(a) if normalize else a
