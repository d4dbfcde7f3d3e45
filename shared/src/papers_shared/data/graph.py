"""Graph data: contextual stochastic block models, PyG datasets and graph FSCIL splits.

torch_geometric is an optional dependency (``papers-shared[graph]``); it is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from papers_shared.data.errors import DatasetNotFoundError
from papers_shared.sessions import IncrementalSplit, Session

__all__ = [
    "GraphFSCILSplit",
    "load_pyg_dataset",
    "make_csbm_graph",
    "make_gfscil_split",
    "session_edge_mask",
]


def _pyg():
    try:
        import torch_geometric  # noqa: F401
        from torch_geometric.data import Data
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "torch_geometric is required for graph data: pip install 'papers-shared[graph]'"
        ) from exc
    return Data


def make_csbm_graph(
    num_classes: int = 12,
    nodes_per_class: int = 80,
    feat_dim: int = 32,
    p_in: float = 0.05,
    p_out: float = 0.005,
    mean_sep: float = 1.5,
    seed: int = 0,
):
    """Contextual stochastic block model as a PyG ``Data`` (undirected, no self loops, no duplicates).

    Node features are ``mu_{y} + N(0, I)`` with class means of norm ``mean_sep`` in random directions;
    an edge joins two nodes of the same class with probability ``p_in`` and of different classes with
    ``p_out``. Edges are sampled per block pair (binomial count, uniform positions), so 10^4+ nodes
    are cheap.
    """
    Data = _pyg()
    if num_classes < 2 or nodes_per_class < 1 or feat_dim < 1:
        raise ValueError("need num_classes >= 2, nodes_per_class >= 1, feat_dim >= 1")
    if not (0.0 <= p_out <= 1.0 and 0.0 <= p_in <= 1.0):
        raise ValueError("p_in and p_out must be probabilities")
    g = torch.Generator().manual_seed(seed)
    n = num_classes * nodes_per_class
    y = torch.arange(num_classes).repeat_interleave(nodes_per_class)
    mu = torch.randn(num_classes, feat_dim, generator=g)
    mu = mu / mu.norm(dim=1, keepdim=True) * mean_sep
    x = mu[y] + torch.randn(n, feat_dim, generator=g)
    src, dst = [], []
    for a in range(num_classes):
        for b in range(a, num_classes):
            p = p_in if a == b else p_out
            pairs = nodes_per_class * (nodes_per_class - 1) // 2 if a == b else nodes_per_class**2
            if p == 0.0 or pairs == 0:
                continue
            count = int(
                torch.binomial(
                    torch.tensor(float(pairs), dtype=torch.float64),
                    torch.tensor(p, dtype=torch.float64),
                    generator=g,
                ).item()
            )
            if count == 0:
                continue
            i = torch.randint(0, nodes_per_class, (count,), generator=g) + a * nodes_per_class
            j = torch.randint(0, nodes_per_class, (count,), generator=g) + b * nodes_per_class
            keep = i != j
            src.append(i[keep])
            dst.append(j[keep])
    if src:
        s, d = torch.cat(src), torch.cat(dst)
        lo, hi = torch.minimum(s, d), torch.maximum(s, d)
        und = torch.unique(torch.stack([lo, hi]), dim=1)
        edge_index = torch.cat([und, und.flip(0)], dim=1)
    else:
        edge_index = torch.empty(2, 0, dtype=torch.long)
    return Data(x=x, edge_index=edge_index, y=y, num_nodes=n)


_PYG_DATASETS = {
    "corafull": ("CoraFull", {}),
    "cora_full": ("CoraFull", {}),
    "computers": ("Amazon", {"name": "Computers"}),
    "amazon": ("Amazon", {"name": "Computers"}),
    "cs": ("Coauthor", {"name": "CS"}),
    "coauthor-cs": ("Coauthor", {"name": "CS"}),
    "reddit": ("Reddit", {}),
}


def load_pyg_dataset(name: str, root: str | Path, download: bool = False):
    """CoraFull / Amazon-Computers / Coauthor-CS / Reddit from ``root``.

    PyG datasets download on construction; with ``download=False`` (the default, for offline machines)
    a missing dataset raises :class:`DatasetNotFoundError` before any network access.
    """
    _pyg()
    import torch_geometric.datasets as pyg_datasets

    key = name.lower()
    if key not in _PYG_DATASETS:
        raise ValueError(f"unknown graph dataset {name!r}; known: {sorted(set(_PYG_DATASETS))}")
    cls_name, kwargs = _PYG_DATASETS[key]
    root = Path(root).expanduser() / cls_name.lower()
    if "name" in kwargs:
        root_check = root / kwargs["name"]
    else:
        root_check = root
    have = (root_check / "processed").is_dir() or (root_check / "raw").is_dir() or (root / "raw").is_dir()
    if not have and not download:
        raise DatasetNotFoundError(
            f"PyG dataset {cls_name}{'/' + kwargs['name'] if 'name' in kwargs else ''}",
            root,
            f"Run once with internet: torch_geometric.datasets.{cls_name}(root={str(root)!r}"
            f"{', name=' + repr(kwargs['name']) if 'name' in kwargs else ''}), or allow the download (download=True).",
        )
    return getattr(pyg_datasets, cls_name)(str(root), **kwargs)[0]


class GraphFSCILSplit(IncrementalSplit):
    """FSCIL sessions over the nodes of one graph (indices are node ids)."""

    def mask(self, idx: torch.Tensor, num_nodes: int) -> torch.Tensor:
        m = torch.zeros(num_nodes, dtype=torch.bool)
        m[idx] = True
        return m


def make_gfscil_split(
    y: torch.Tensor,
    base_classes: int | Sequence[int] = 2,
    ways: int = 2,
    shots: int = 5,
    val_frac: float = 0.2,
    seed: int = 0,
    legacy: bool = False,
    base_fracs: tuple[float, float, float] = (0.6, 0.2, 0.2),
    num_sessions: int | None = None,
) -> GraphFSCILSplit:
    """Graph few-shot class-incremental split.

    * Base classes: an explicit list, or the ``base_classes`` largest classes by node count (ties by id).
      Base nodes are split ``base_fracs`` (train/val/test) for encoder pre-training; the session also
      records ``shots`` supports per base class (``support_idx``, taken from the train part).
    * Novel classes are shuffled with ``seed`` and chunked into sessions of ``ways``. Per class, the
      shuffled node list gives ``shots`` supports, val up to ``int(val_frac * n)``, test the rest.
    * ``legacy=True`` reproduces the official Mecoin split (each class list holds every node twice, so
      the test part contains copies of the support and val nodes: a leak kept only for comparison).
    """
    y = torch.as_tensor(y).long().cpu()
    if y.ndim != 1:
        raise ValueError("y must be a 1-D node label vector")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(y, return_counts=True)
    if isinstance(base_classes, int):
        order = sorted(zip(classes.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0]))
        base = sorted(c for c, _ in order[:base_classes])
    else:
        base = sorted(int(c) for c in base_classes)
    rest = [c for c in classes.tolist() if c not in set(base)]
    rest = [rest[i] for i in torch.randperm(len(rest), generator=g).tolist()]
    max_s = len(rest) // ways
    num_sessions = max_s if num_sessions is None else num_sessions
    if num_sessions > max_s:
        raise ValueError(f"{len(rest)} novel classes give at most {max_s} sessions of {ways} ways")

    def nodes(c: int) -> torch.Tensor:
        idx = torch.nonzero(y == c).flatten()
        return idx[torch.randperm(idx.numel(), generator=g)]

    tr_b, va_b, te_b, sup_b = [], [], [], []
    for c in base:
        idx = nodes(c)
        n_tr, n_va = int(base_fracs[0] * idx.numel()), int(base_fracs[1] * idx.numel())
        tr_b.append(idx[:n_tr])
        va_b.append(idx[n_tr : n_tr + n_va])
        te_b.append(idx[n_tr + n_va :])
        if n_tr < shots:
            raise ValueError(f"base class {c} has too few training nodes for {shots} supports")
        sup_b.append(idx[:shots])
    cat = torch.cat
    sessions = [Session(0, base, cat(tr_b), cat(te_b), cat(va_b), support_idx=cat(sup_b))]
    for s in range(num_sessions):
        cs = rest[s * ways : (s + 1) * ways]
        sup, va, te = [], [], []
        for c in cs:
            idx = nodes(c)
            if legacy:
                idx = torch.cat([idx, idx])
            if idx.numel() <= shots:
                raise ValueError(f"class {c} has {idx.numel()} nodes, not enough for {shots} shots")
            cut = max(shots, int(val_frac * idx.numel()))
            sup.append(idx[:shots])
            va.append(idx[shots:cut])
            te.append(idx[cut:])
        sessions.append(Session(s + 1, cs, cat(sup), cat(te), cat(va), support_idx=cat(sup)))
    split = GraphFSCILSplit(
        sessions,
        base + rest[: num_sessions * ways],
        protocol="gfscil-legacy" if legacy else "gfscil",
        seed=seed,
    )
    if not legacy:
        split.check(shared_pool=True)
    return split


def session_edge_mask(edge_index: torch.Tensor, y: torch.Tensor, seen_classes: Sequence[int]) -> torch.Tensor:
    """Boolean mask over edges whose two endpoints both carry a seen-class label."""
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be [2, E], got {tuple(edge_index.shape)}")
    seen = torch.zeros(int(y.max()) + 1, dtype=torch.bool, device=y.device)
    seen[torch.as_tensor(list(seen_classes), dtype=torch.long, device=y.device)] = True
    node_seen = seen[y]
    return node_seen[edge_index[0]] & node_seen[edge_index[1]]
