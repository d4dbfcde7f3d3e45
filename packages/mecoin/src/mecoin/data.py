"""Datasets and GFSCIL splits (the paper's datasets; official ``pretrain.py`` and ``utils/split_data.py``,
commit b8a41c4).

* Real graphs through :func:`papers_shared.data.graph.load_pyg_dataset` (CoraFull, Amazon-Computers,
  Coauthor-CS, Reddit; a clear :class:`~papers_shared.data.DatasetNotFoundError` offline).
* The synthetic CSBM of the quick run (ours) through :func:`papers_shared.data.graph.make_csbm_graph`.
* Splits through :func:`papers_shared.data.graph.make_gfscil_split`. Its ``legacy=True`` mode
  reproduces the duplicated-list leak for the *novel* classes only; the official code also builds the
  base session from the duplicated, shuffled base lists (pre-training nodes with repeats; session-0
  supports, validation and test cut at ``[:5]``, ``[5:int(0.2·2n)]``, ``[int(0.2·2n):]`` of the
  doubled list, so the base test set contains the supports and most pre-training nodes).
  :func:`legacy_base_session` adds that part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mecoin.config import DATASET_DEFAULTS, ExperimentConfig
from papers_shared.errors import InputError

__all__ = [
    "DATASET_DEFAULTS",
    "GFSCILTask",
    "build_task",
    "legacy_base_session",
    "load_graph",
]


@dataclass
class GFSCILTask:
    """A graph with its sessions and the base-session pre-training split."""

    name: str
    data: object  # torch_geometric.data.Data with x, edge_index, y
    split: object  # papers_shared.data.graph.GraphFSCILSplit
    pretrain_train_idx: torch.Tensor
    pretrain_val_idx: torch.Tensor
    pretrain_test_idx: torch.Tensor
    num_classes: int

    @property
    def base_classes(self) -> list[int]:
        return list(self.split[0].classes)

    def to(self, device: torch.device | str) -> GFSCILTask:
        self.data = self.data.to(device)
        return self


def load_graph(cfg: ExperimentConfig):
    """The graph named by ``cfg.dataset`` as a PyG ``Data`` (float features, long labels)."""
    from papers_shared.data.graph import load_pyg_dataset, make_csbm_graph

    if cfg.dataset == "csbm":
        c = cfg.csbm
        # make_csbm_graph is a function of its seed; the global RNG is forked as well so that loading the
        # graph never disturbs the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            data = make_csbm_graph(
                c.num_classes, c.nodes_per_class, c.feat_dim, c.p_in, c.p_out, c.mean_sep, c.seed
            )
    else:
        data = load_pyg_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    data.x = data.x.float()
    data.y = data.y.long().view(-1)
    return data


def legacy_base_session(y: torch.Tensor, base: list[int], shots: int, generator: torch.Generator):
    """The official base session (``utils/split_data.py:load_raw_data``, ``split_base_data`` and
    ``split_novel_data``).

    Per base class the node list holds every node twice and is shuffled; pre-training takes
    ``ceil(0.6·2n)`` train and ``ceil(0.2·2n)`` val entries (with repeats), session 0 takes
    ``[:shots]`` supports, ``[shots:int(0.2·2n)]`` val and ``[int(0.2·2n):]`` test.
    Returns ``(support, val, test, pre_train, pre_val, pre_test)``.
    """
    parts: list[list[torch.Tensor]] = [[] for _ in range(6)]
    for c in base:
        idx = torch.nonzero(y == c).flatten()
        doubled = torch.cat([idx, idx])
        doubled = doubled[torch.randperm(doubled.numel(), generator=generator)]
        m = doubled.numel()
        n_tr, n_va = math.ceil(0.6 * m), math.ceil(0.2 * m)
        cut = int(0.2 * m)
        for bucket, piece in zip(
            parts,
            (
                doubled[:shots],
                doubled[shots:cut],
                doubled[cut:],
                doubled[:n_tr],
                doubled[n_tr : n_tr + n_va],
                doubled[n_tr + n_va :],
            ),
        ):
            bucket.append(piece)
    return tuple(torch.cat(p) for p in parts)


def _check_graph(data) -> None:
    """Clear errors (:class:`InputError`) for malformed graphs before any training starts."""
    for name in ("x", "y", "edge_index"):
        if not isinstance(getattr(data, name, None), torch.Tensor):
            raise InputError(f"the graph needs a tensor attribute {name!r}")
    x, y, ei = data.x, data.y, data.edge_index
    if x.ndim != 2 or not x.dtype.is_floating_point:
        raise InputError(f"node features must be a floating [N, F] tensor, got {tuple(x.shape)} {x.dtype}")
    n = x.shape[0]
    if y.ndim != 1 or y.shape[0] != n or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"labels must be integer class ids of shape [{n}], got {tuple(y.shape)} {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise InputError(f"labels must be >= 0, got {int(y.min())}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("node features contain NaN or inf")
    if ei.dtype.is_floating_point or ei.dtype.is_complex or ei.dtype == torch.bool:
        raise InputError(f"edge_index must hold integer node ids, got dtype {ei.dtype}")
    if ei.ndim != 2 or ei.shape[0] != 2:
        hint = " (transpose it: PyG expects [2, E], not [E, 2])" if ei.ndim == 2 and ei.shape[1] == 2 else ""
        raise InputError(f"edge_index must have shape [2, E], got {tuple(ei.shape)}{hint}")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise InputError(
            f"edge_index holds node ids in [{int(ei.min())}, {int(ei.max())}], outside [0, {n}) for {n} nodes"
        )


def build_task(cfg: ExperimentConfig, seed: int, data=None) -> GFSCILTask:
    """Graph + sessions for one seed (clean split by default, the official one with ``legacy_split``)."""
    from papers_shared.data.graph import make_gfscil_split
    from papers_shared.sessions import Session

    data = load_graph(cfg) if data is None else data
    _check_graph(data)
    p = cfg.protocol
    y = data.y.cpu()
    num_classes = int(y.max()) + 1
    split = make_gfscil_split(
        y,
        base_classes=p.base_classes,
        ways=p.ways,
        shots=p.shots,
        val_frac=p.val_frac,
        seed=seed,
        legacy=p.legacy_split,
        num_sessions=p.num_sessions,
    )
    s0 = split[0]
    pre = (s0.train_idx, s0.val_idx, s0.test_idx)
    if p.legacy_split:
        g = torch.Generator().manual_seed(seed + 1)
        sup, val, test, *pre = legacy_base_session(y, list(s0.classes), p.shots, g)
        split.sessions[0] = Session(0, list(s0.classes), sup, test, val, support_idx=sup)
    return GFSCILTask(cfg.dataset, data, split, pre[0], pre[1], pre[2], num_classes)
