"""Explicit memory (EM) of class prototypes and prototype graphs.

Per seen class ``c`` EM stores
* ``feats[c]``  = ``F_bar_c in R^{M x D}``: the mean backbone local-feature map (ours: the G2G analogue of
  C-FSCIL's ``feat_replay``, ``model.py:update_feat_replay``, which keeps one mean ``D``-vector per class),
* ``keys[c]``   = V2V key ``g_phi(mean GAP(F(x)))``: the projection of the class-mean feature, raw (``rho``
  is applied at read time), as C-FSCIL's ``align()`` builds its evaluation prototypes
  (``model.py:update_prototypes_feat`` on ``feat_replay``),
* ``nodes[c]``  = ``Z_c``: position-wise mean over the supports of ``rho(g_phi(f_i(x)))`` (ours),
* ``adj[c]``    = ``A_c``: cos-adjacency of ``Z_c`` (``edge_proto="from_nodes"``) or the mean of the
  supports' adjacencies (``"mean_adj"``) (ours).

``rebuild`` recomputes keys, nodes and edges from ``feats`` with the current ``g_phi`` (always
``from_nodes`` for edges: the per-sample adjacencies are not stored). Writing new classes never touches the
rows of old classes.
"""

from __future__ import annotations

import torch
from torch import nn

from g2g_fscil.graphs import check_finite, cosine_adjacency, represent
from g2g_fscil.interaction import PreparedGraphs, prepare_graphs

__all__ = ["ExplicitMemory", "class_stats"]

_FIELDS = ("class_ids", "counts", "feats", "keys", "nodes", "adj")


@torch.no_grad()
def class_stats(
    labels: torch.Tensor,
    maps: torch.Tensor,
    proj: nn.Module,
    representation: str = "tanh",
    knn: int | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Per-class sums over a batch: ``n``, ``feats`` (sum of maps), ``keys`` (sum of ``g(GAP)``), ``nodes``
    (sum of ``rho(g(f_i))``) and ``adj`` (sum of cos-adjacencies). Add several batches with
    :func:`merge_stats`, then :meth:`ExplicitMemory.write_stats`."""
    if maps.ndim != 3:
        raise ValueError(f"backbone maps must be [K, M, D], got shape {tuple(maps.shape)}")
    if labels.ndim != 1 or labels.shape[0] != maps.shape[0]:
        raise ValueError(f"labels must be [K={maps.shape[0]}], got shape {tuple(labels.shape)}")
    check_finite(maps, "backbone maps")
    keys = proj(maps.mean(1))
    raw = proj(maps)
    nodes = represent(raw, representation)
    adj = cosine_adjacency(nodes, knn)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for c in labels.unique(sorted=True).tolist():
        sel = labels == c
        out[int(c)] = {
            "n": sel.sum(),
            "feats": maps[sel].sum(0),
            "keys": keys[sel].sum(0),
            "nodes": nodes[sel].sum(0),
            "raw": raw[sel].sum(0),
            "adj": adj[sel].sum(0),
        }
    return out


def merge_stats(a: dict, b: dict) -> dict:
    out = dict(a)
    for c, st in b.items():
        out[c] = {k: out[c][k] + v for k, v in st.items()} if c in out else dict(st)
    return out


class ExplicitMemory(nn.Module):
    """Class-indexed memory; rows are appended in session order."""

    def __init__(self, feat_dim: int, proj_dim: int, num_nodes: int) -> None:
        super().__init__()
        self.feat_dim, self.proj_dim, self.num_nodes = feat_dim, proj_dim, num_nodes
        m, d, dd = num_nodes, feat_dim, proj_dim
        self.register_buffer("class_ids", torch.empty(0, dtype=torch.long))
        self.register_buffer("counts", torch.empty(0))
        self.register_buffer("feats", torch.empty(0, m, d))
        self.register_buffer("keys", torch.empty(0, dd))
        self.register_buffer("nodes", torch.empty(0, m, dd))
        self.register_buffer("adj", torch.empty(0, m, m))
        self._prepared: PreparedGraphs | None = None

    def __len__(self) -> int:
        return int(self.class_ids.numel())

    def invalidate(self) -> None:
        """Drop the cached prepared prototypes (call after assigning ``keys``/``nodes``/``adj`` directly)."""
        self._prepared = None

    def prepared(self, alpha: float = 0.5) -> PreparedGraphs:
        """Prototype graphs in the form of the default read-out (one matrix, see
        :func:`~g2g_fscil.interaction.prepare_graphs`), cached until the next change."""
        if self._prepared is None or self._prepared.alpha != alpha:
            self._prepared = prepare_graphs(self.nodes, self.adj, alpha)
        return self._prepared

    def reset(self) -> None:
        self._prepared = None
        for name in _FIELDS:
            buf = getattr(self, name)
            setattr(self, name, buf.new_empty((0, *buf.shape[1:])))

    @torch.no_grad()
    def write_stats(
        self,
        stats: dict[int, dict[str, torch.Tensor]],
        edge_proto: str = "from_nodes",
        knn: int | None = None,
        node_proto: str = "mean_rho",
        representation: str = "tanh",
    ):
        """Append the classes of ``stats`` (see :func:`class_stats`); a class already stored is an error.

        ``node_proto="mean_rho"`` (ours): ``Z_c = mean rho(g(f_i))``; ``"rho_key"``: ``rho(mean g(f_i))``,
        the convention of the V2V key (``rho`` after aggregating), under which G2G with M = 1 equals V2V at
        memory level.
        """
        if not stats:
            raise ValueError("nothing to write: stats is empty")
        present = set(self.class_ids.tolist())
        dup = sorted(set(stats) & present)
        if dup:
            raise ValueError(f"classes {dup} are already in the explicit memory")
        cs = sorted(stats)
        n = torch.stack([stats[c]["n"].to(self.feats.dtype) for c in cs]).to(self.feats.device)
        feats = torch.stack([stats[c]["feats"] for c in cs]).to(self.feats) / n.view(-1, 1, 1)
        if feats.shape[1:] != self.feats.shape[1:]:
            raise ValueError(
                f"maps have shape [M, D]={tuple(feats.shape[1:])}, memory expects "
                f"{tuple(self.feats.shape[1:])}"
            )
        keys = torch.stack([stats[c]["keys"] for c in cs]).to(self.keys) / n.view(-1, 1)
        if node_proto == "mean_rho":
            nodes = torch.stack([stats[c]["nodes"] for c in cs]).to(self.nodes) / n.view(-1, 1, 1)
        elif node_proto == "rho_key":
            raw = torch.stack([stats[c]["raw"] for c in cs]).to(self.nodes) / n.view(-1, 1, 1)
            nodes = represent(raw, representation)
        else:
            raise ValueError(f"node_proto must be mean_rho|rho_key, got {node_proto!r}")
        if edge_proto == "from_nodes":
            adj = cosine_adjacency(nodes, knn)
        elif edge_proto == "mean_adj":
            adj = torch.stack([stats[c]["adj"] for c in cs]).to(self.adj) / n.view(-1, 1, 1)
        else:
            raise ValueError(f"edge_proto must be from_nodes|mean_adj, got {edge_proto!r}")
        self._prepared = None
        new_ids = torch.tensor(cs, dtype=torch.long, device=self.class_ids.device)
        self.class_ids = torch.cat([self.class_ids, new_ids])
        self.counts = torch.cat([self.counts, n])
        self.feats = torch.cat([self.feats, feats])
        self.keys = torch.cat([self.keys, keys])
        self.nodes = torch.cat([self.nodes, nodes])
        self.adj = torch.cat([self.adj, adj])

    def write(
        self,
        labels: torch.Tensor,
        maps: torch.Tensor,
        proj: nn.Module,
        representation: str = "tanh",
        edge_proto: str = "from_nodes",
        knn: int | None = None,
        node_proto: str = "mean_rho",
    ) -> None:
        """Write the classes of ``labels`` from backbone local maps ``[K, M, D]``."""
        stats = class_stats(labels, maps, proj, representation, knn)
        self.write_stats(stats, edge_proto, knn, node_proto, representation)

    @torch.no_grad()
    def rebuild(self, proj: nn.Module, representation: str = "tanh", knn: int | None = None) -> None:
        """Recompute keys, nodes and edges of every class from the stored ``F_bar_c`` (C-FSCIL ``align()``
        stage 5, on local maps)."""
        self._prepared = None
        if len(self) == 0:
            return
        self.keys = proj(self.feats.mean(1)).to(self.keys)
        self.nodes = represent(proj(self.feats), representation).to(self.nodes)
        self.adj = cosine_adjacency(self.nodes, knn)

    def vectors(self) -> torch.Tensor:
        return self.keys

    def graphs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.nodes, self.adj

    def _apply(self, fn, *args, **kwargs):
        self._prepared = None  # device / dtype moves
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._prepared = None
        for name in _FIELDS:
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
