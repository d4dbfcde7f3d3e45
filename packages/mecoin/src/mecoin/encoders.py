"""GNN encoders (official ``backbone/model.py``, commit b8a41c4).

* :class:`GCNEncoder`: ``H = Â·Dropout(ReLU(Â X W1 + b1))·W2 + b2`` with widths ``F → 2h → h`` and no
  output activation, Kipf-style uniform init; ``torch_geometric.nn.GCNConv(normalize=False)`` on the
  precomputed ``Â`` weights (:mod:`mecoin.graph`).
* :class:`GATEncoder`: 2 ``GATConv`` layers (8 heads of ``2h`` concatenated, then one head of ``h``),
  LeakyReLU slope 0.2, ELU; ``legacy_gat_logsoftmax`` ends with the code's ``log_softmax`` over the
  feature dims (official ``backbone/model.py:GAT.forward``).
* :class:`ConvEncoder`: any ``torch_geometric.nn`` conv class by name (``SAGEConv``, ``GINConv`` is
  excluded because it needs an MLP, ``GraphConv``, ``TAGConv``, ``ChebConv`` ...), same widths.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from mecoin.config import EncoderConfig
from mecoin.graph import gcn_adjacency, symmetric_edges
from papers_shared.config import ConfigError

__all__ = [
    "ConvEncoder",
    "GATEncoder",
    "GCNEncoder",
    "build_encoder",
    "sparse_adjacency",
]


def _default_graph(x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None):
    """Normalise a raw ``edge_index`` when the caller passes no weights."""
    if edge_weight is not None:
        return edge_index, edge_weight
    return gcn_adjacency(symmetric_edges(edge_index, x.shape[0]), x.shape[0])


def _check_x(x: torch.Tensor, in_dim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"node features must be a [N, F] tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[1] != in_dim:
        raise ValueError(f"node features have {x.shape[1]} columns, the encoder expects {in_dim}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"node features must be floating point, got {x.dtype}")


def sparse_adjacency(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``Â`` as a torch sparse CSR matrix (PyG convs then aggregate with one ``spmm``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_coo_tensor(
            edge_index, edge_weight.float(), (num_nodes, num_nodes)
        ).to_sparse_csr()


class _AdjacencyCache:
    """Holds the last ``(edge_index, edge_weight) → Â`` conversion; copies start empty (sparse CSR
    tensors cannot be deep-copied or pickled)."""

    def __init__(self) -> None:
        self.key: tuple[torch.Tensor, torch.Tensor] | None = None
        self.adj: torch.Tensor | None = None

    def get(self, edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
        k = self.key
        if k is None or k[0] is not edge_index or k[1] is not edge_weight or self.adj.shape[0] != num_nodes:
            self.key, self.adj = (
                (edge_index, edge_weight),
                sparse_adjacency(edge_index, edge_weight, num_nodes),
            )
        return self.adj

    def __deepcopy__(self, memo) -> _AdjacencyCache:
        return _AdjacencyCache()

    def __getstate__(self) -> dict:
        return {"key": None, "adj": None}


class GCNEncoder(nn.Module):
    """Two-layer GCN of the official code (``backbone/model.py:GCN``).

    The normalised graph is turned into a sparse CSR ``Â`` (cached while the same ``edge_index`` and
    ``edge_weight`` tensors are passed), an order of magnitude faster than scatter message passing.
    """

    def __init__(self, in_dim: int, hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.in_dim, self.out_dim, self.dropout = in_dim, hidden, dropout
        self.conv1 = GCNConv(in_dim, 2 * hidden, normalize=False, add_self_loops=False)
        self.conv2 = GCNConv(2 * hidden, hidden, normalize=False, add_self_loops=False)
        self._adj = _AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(out), 1/sqrt(out)) for weights and biases (official ``GraphConvolution.reset_parameters``)."""
        for conv in (self.conv1, self.conv2):
            bound = 1.0 / math.sqrt(conv.out_channels)
            nn.init.uniform_(conv.lin.weight, -bound, bound)
            nn.init.uniform_(conv.bias, -bound, bound)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
        _check_x(x, self.in_dim)
        edge_index, edge_weight = _default_graph(x, edge_index, edge_weight)
        adj = self._adj.get(edge_index, edge_weight, x.shape[0])
        h = F.relu(self.conv1(x, adj))
        h = F.dropout(h, self.dropout, training=self.training)
        return self.conv2(h, adj)


class GATEncoder(nn.Module):
    """Two-layer GAT of the official code (``backbone/model.py:GAT``); edge weights are ignored (only the pattern)."""

    def __init__(
        self,
        in_dim: int,
        hidden: int = 128,
        heads: int = 8,
        negative_slope: float = 0.2,
        dropout: float = 0.5,
        legacy_logsoftmax: bool = False,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GATConv

        self.in_dim, self.out_dim, self.dropout = in_dim, hidden, dropout
        self.legacy_logsoftmax = legacy_logsoftmax
        kw = dict(negative_slope=negative_slope, dropout=dropout, add_self_loops=False)
        self.conv1 = GATConv(in_dim, 2 * hidden, heads=heads, concat=True, **kw)
        self.conv2 = GATConv(2 * hidden * heads, hidden, heads=1, concat=False, **kw)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
        _check_x(x, self.in_dim)
        edge_index, _ = _default_graph(x, edge_index, edge_weight)
        h = F.dropout(x, self.dropout, training=self.training)
        h = F.elu(self.conv1(h, edge_index))
        h = F.dropout(h, self.dropout, training=self.training)
        h = F.elu(self.conv2(h, edge_index))
        return F.log_softmax(h, dim=1) if self.legacy_logsoftmax else h


class ConvEncoder(nn.Module):
    """``F → 2h → h`` with any ``torch_geometric.nn`` conv taking ``(in_channels, out_channels)``."""

    def __init__(self, conv: str, in_dim: int, hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        import torch_geometric.nn as pyg_nn

        cls = getattr(pyg_nn, conv, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, pyg_nn.MessagePassing):
            raise ValueError(f"{conv!r} is not a torch_geometric.nn conv class")
        self.in_dim, self.out_dim, self.dropout = in_dim, hidden, dropout
        extra = {"K": 2} if conv == "ChebConv" else {}
        try:
            self.conv1 = cls(in_dim, 2 * hidden, **extra)
            self.conv2 = cls(2 * hidden, hidden, **extra)
        except TypeError as exc:
            raise ValueError(f"{conv} cannot be built as {conv}(in_channels, out_channels): {exc}") from exc
        self._weighted = "edge_weight" in inspect.signature(cls.forward).parameters

    def _conv(self, conv, h, edge_index, edge_weight):
        return conv(h, edge_index, edge_weight) if self._weighted else conv(h, edge_index)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
        _check_x(x, self.in_dim)
        edge_index, edge_weight = _default_graph(x, edge_index, edge_weight)
        h = F.relu(self._conv(self.conv1, x, edge_index, edge_weight))
        h = F.dropout(h, self.dropout, training=self.training)
        return self._conv(self.conv2, h, edge_index, edge_weight)


def build_encoder(cfg: EncoderConfig, in_dim: int) -> nn.Module:
    """Encoder named by ``cfg.backbone`` (``gcn``, ``gat`` or a torch_geometric conv class name)."""
    name = cfg.backbone
    if name.lower() == "gcn":
        return GCNEncoder(in_dim, cfg.hidden, cfg.dropout)
    if name.lower() == "gat":
        return GATEncoder(
            in_dim, cfg.hidden, cfg.heads, cfg.negative_slope, cfg.dropout, cfg.legacy_gat_logsoftmax
        )
    try:
        return ConvEncoder(name, in_dim, cfg.hidden, cfg.dropout)
    except ValueError as exc:
        raise ConfigError(f"encoder.backbone: {exc}; use gcn, gat or a torch_geometric conv class") from None
