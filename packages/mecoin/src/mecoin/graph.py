"""Normalised adjacency and per-session graphs (official ``utils/split_data.py:normalize_adj`` and
``get_incremental_adj_high``, commit b8a41c4).

The official code builds ``Â = D̃^{-1/2}(A + I)D̃^{-1/2}`` once on the symmetrised, binary full graph
and, at session ``t``, keeps the entries whose two endpoints carry a seen-class label, *without*
renormalising (``renormalize=False``, the legacy behaviour). The package default recomputes the
normalisation on the masked graph (``renormalize=True``) so that a node's degree only counts the
edges it actually has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from papers_shared.data.graph import session_edge_mask

__all__ = ["SessionGraphs", "gcn_adjacency", "symmetric_edges"]


def _check_edge_index(edge_index: torch.Tensor, num_nodes: int) -> None:
    if not isinstance(edge_index, torch.Tensor) or edge_index.ndim != 2 or edge_index.shape[0] != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, torch.Tensor) else type(edge_index)
        raise ValueError(f"edge_index must be a [2, E] tensor, got {shape}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index must hold integer node ids, got dtype {edge_index.dtype}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index holds node ids outside [0, {num_nodes})")


def symmetric_edges(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Undirected, binary, self-loop-free, sorted edge list (both directions), as the code's
    ``adj[i, j] = adj[j, i] = 1``."""
    _check_edge_index(edge_index, num_nodes)
    ei = edge_index.long()
    ei = ei[:, ei[0] != ei[1]]
    both = torch.cat([ei, ei.flip(0)], dim=1)
    key = torch.unique(both[0] * num_nodes + both[1])
    return torch.stack([key // num_nodes, key % num_nodes])


def gcn_adjacency(
    edge_index: torch.Tensor,
    num_nodes: int,
    degree: torch.Tensor | None = None,
    loop_nodes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges and weights of ``D̃^{-1/2}(A + I)D̃^{-1/2}`` (official ``normalize_adj``).

    ``edge_index`` must already be symmetric and loop-free (see :func:`symmetric_edges`).
    ``degree`` (``1 + deg``) defaults to the degree of ``edge_index`` itself; pass the full-graph
    degree to reuse the full normalisation on a masked graph (official ``get_incremental_adj_high``). ``loop_nodes`` (bool
    ``[N]``) restricts the self loops (the code drops the loops of unseen-class nodes with them).
    """
    src, dst = edge_index
    if degree is None:
        degree = torch.ones(num_nodes, dtype=torch.float32, device=edge_index.device)
        degree.index_add_(0, src, torch.ones_like(src, dtype=torch.float32))
    dinv = degree.float().clamp(min=1e-12).rsqrt()
    loops = torch.arange(num_nodes, device=edge_index.device)
    if loop_nodes is not None:
        loops = loops[loop_nodes]
    ei = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    w = torch.cat([dinv[src] * dinv[dst], dinv[loops] ** 2])
    return ei, w


class SessionGraphs:
    """Per-session normalised graphs of one attributed graph (transductive: the session graph keeps the edges between seen-class nodes).

    >>> graphs = SessionGraphs(data.edge_index, data.y, renormalize=True)
    >>> edge_index, edge_weight = graphs.for_classes(seen_classes)
    """

    def __init__(self, edge_index: torch.Tensor, y: torch.Tensor, renormalize: bool = True) -> None:
        self.num_nodes = int(y.numel())
        self.y = y
        self.full = symmetric_edges(edge_index, self.num_nodes)
        self.renormalize = renormalize
        self.full_degree = torch.ones(self.num_nodes, device=self.full.device)
        self.full_degree.index_add_(0, self.full[0], torch.ones(self.full.shape[1], device=self.full.device))
        self._cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def full_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        return gcn_adjacency(self.full, self.num_nodes, self.full_degree)

    def masked(self, edge_mask: torch.Tensor, loop_nodes: torch.Tensor | None = None):
        """Graph restricted to ``self.full[:, edge_mask]`` (mask over the symmetric edge list)."""
        if edge_mask.dtype != torch.bool or edge_mask.shape != (self.full.shape[1],):
            raise ValueError(f"edge_mask must be a bool tensor of shape [{self.full.shape[1]}]")
        kept = self.full[:, edge_mask]
        degree = None if self.renormalize else self.full_degree
        return gcn_adjacency(kept, self.num_nodes, degree, loop_nodes)

    def for_classes(self, seen_classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges whose two endpoints carry a seen-class label (``session_edge_mask``), normalised."""
        key = tuple(sorted(int(c) for c in seen_classes))
        if key not in self._cache:
            mask = session_edge_mask(self.full, self.y, key)
            seen = torch.zeros(int(self.y.max()) + 1, dtype=torch.bool, device=self.y.device)
            seen[list(key)] = True
            self._cache[key] = self.masked(mask, loop_nodes=seen[self.y])
        return self._cache[key]

    def to(self, device: torch.device | str) -> SessionGraphs:
        self.y = self.y.to(device)
        self.full = self.full.to(device)
        self.full_degree = self.full_degree.to(device)
        self._cache = {k: (a.to(device), b.to(device)) for k, (a, b) in self._cache.items()}
        return self
