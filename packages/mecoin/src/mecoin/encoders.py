"""GNN encoders and base-session pre-training (spec §3.1).

* :class:`GCNEncoder`: ``H = Â·Dropout(ReLU(Â X W1 + b1))·W2 + b2`` with widths ``F → 2h → h`` and no
  output activation, Kipf-style uniform init; ``torch_geometric.nn.GCNConv(normalize=False)`` on the
  precomputed ``Â`` weights (:mod:`mecoin.graph`).
* :class:`GATEncoder`: 2 ``GATConv`` layers (8 heads of ``2h`` concatenated, then one head of ``h``),
  LeakyReLU slope 0.2, ELU; ``legacy_gat_logsoftmax`` ends with the code's ``log_softmax`` over the
  feature dims (spec §6.11).
* :class:`ConvEncoder`: any ``torch_geometric.nn`` conv class by name (``SAGEConv``, ``GINConv`` is
  excluded because it needs an MLP, ``GraphConv``, ``TAGConv``, ``ChebConv`` ...), same widths.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mecoin.config import EncoderConfig, PretrainConfig
from mecoin.graph import gcn_adjacency, symmetric_edges

__all__ = [
    "ConvEncoder",
    "GATEncoder",
    "GCNEncoder",
    "PretrainResult",
    "build_encoder",
    "pretrain_encoder",
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
    """Two-layer GCN of the official code (spec §3.1).

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
        """Uniform(-1/sqrt(out), 1/sqrt(out)) for weights and biases (Kipf-style, spec §3.1)."""
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
    """Two-layer GAT of the official code (spec §3.1); edge weights are ignored (only the pattern)."""

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
    return ConvEncoder(name, in_dim, cfg.hidden, cfg.dropout)


@dataclass
class PretrainResult:
    """Pre-trained encoder and its linear classifier ``Linear(h, K_tot)`` plus the log."""

    encoder: nn.Module
    classifier: nn.Linear
    best_val_acc: float
    best_epoch: int
    epochs_run: int


def pretrain_encoder(
    encoder: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    edge_index: torch.Tensor,
    edge_weight: torch.Tensor | None,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    num_classes: int,
    cfg: PretrainConfig | None = None,
    progress: bool = False,
) -> PretrainResult:
    """Base-session pre-training (spec §3.1): encoder + ``Linear(h, K_tot)``, NLL on ``log_softmax``,
    Adam, full batch on the base graph; validation every ``eval_every`` epochs, the best-validation
    state kept, stop once the no-improvement counter exceeds ``patience``.

    ``legacy_no_zero_grad`` reproduces the missing ``optimizer_classifier.zero_grad()`` (spec §6.10).
    """
    cfg = cfg or PretrainConfig()
    if train_idx.numel() == 0:
        raise ValueError("pre-training needs at least one training node")
    classifier = nn.Linear(encoder.out_dim, num_classes).to(x.device)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.Adam(classifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = (-1.0, 0, copy.deepcopy(encoder.state_dict()), copy.deepcopy(classifier.state_dict()))
    tolerate, epoch = 0, -1
    bar = range(cfg.max_epochs)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="pretrain", leave=False)
    for epoch in bar:
        encoder.train()
        classifier.train()
        opt_enc.zero_grad()
        if not cfg.legacy_no_zero_grad:
            opt_cls.zero_grad()
        logits = classifier(encoder(x, edge_index, edge_weight)[train_idx])
        F.nll_loss(F.log_softmax(logits, dim=1), y[train_idx]).backward()
        opt_enc.step()
        opt_cls.step()
        if epoch > 0 and epoch % cfg.eval_every == 0 and val_idx.numel():
            encoder.eval()
            classifier.eval()
            with torch.no_grad():
                val_logits = classifier(encoder(x, edge_index, edge_weight)[val_idx])
            acc = float((val_logits.argmax(1) == y[val_idx]).float().mean())
            if acc > best[0]:
                best = (
                    acc,
                    epoch,
                    copy.deepcopy(encoder.state_dict()),
                    copy.deepcopy(classifier.state_dict()),
                )
                tolerate = 0
            else:
                tolerate += 1
                if tolerate > cfg.patience:
                    break
    if best[0] >= 0:
        encoder.load_state_dict(best[2])
        classifier.load_state_dict(best[3])
    encoder.eval()
    classifier.eval()
    return PretrainResult(encoder, classifier, max(best[0], 0.0), best[1], epoch + 1)
