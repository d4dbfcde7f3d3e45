"""Class-incremental session splits (seeded, disjoint by construction, checked).

Two protocols:

* **Task splits** (standard class-incremental learning): the class order is cut into ``T`` tasks of
  equal size; every task trains on all its training samples.
* **Few-shot class-incremental (FSCIL)**: a base session with many samples per class, then sessions of
  ``ways`` new classes with ``shots`` training samples each.

Indices refer to the caller's train pool and test pool (two label vectors), or to one pool split per
class (graph nodes, see :func:`papers_shared.data.graph.make_gfscil_split`). Evaluation after session
``t`` uses the test samples of every class seen so far (a single joint test set, not episodic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["IncrementalSplit", "Session", "few_shot_sessions", "task_sessions"]


def _labels(x: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D label vector, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point:
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.long().cpu()


@dataclass
class Session:
    """One session: the classes it introduces and index sets into the train/test pools."""

    index: int
    classes: list[int]
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    val_idx: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    support_idx: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class IncrementalSplit:
    """An ordered list of sessions over a fixed class order."""

    sessions: list[Session]
    class_order: list[int]
    protocol: str
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self):
        return iter(self.sessions)

    def __getitem__(self, i: int) -> Session:
        return self.sessions[i]

    def seen_classes(self, t: int) -> list[int]:
        return [c for s in self.sessions[: t + 1] for c in s.classes]

    def test_idx_seen(self, t: int) -> torch.Tensor:
        """Test indices of all classes seen up to and including session ``t``."""
        return torch.cat([s.test_idx for s in self.sessions[: t + 1]])

    def class_to_session(self) -> dict[int, int]:
        return {c: s.index for s in self.sessions for c in s.classes}

    def check(self, shared_pool: bool = False) -> None:
        """Raise ``AssertionError`` if classes repeat across sessions or index sets overlap.

        ``shared_pool=True`` also requires train, val and test indices to be disjoint (one pool).
        """
        seen: set[int] = set()
        for s in self.sessions:
            cs = set(s.classes)
            if len(cs) != len(s.classes):
                raise AssertionError(f"session {s.index} lists a class twice")
            if cs & seen:
                raise AssertionError(f"session {s.index} repeats classes {sorted(cs & seen)}")
            seen |= cs
        for attr in ("train_idx", "test_idx", "val_idx"):
            all_idx = torch.cat([getattr(s, attr) for s in self.sessions])
            if all_idx.unique().numel() != all_idx.numel():
                raise AssertionError(f"{attr} overlaps between sessions")
        if shared_pool:
            tr = torch.cat([s.train_idx for s in self.sessions])
            if any(s.support_idx is not None for s in self.sessions):
                tr = torch.cat([tr] + [s.support_idx for s in self.sessions if s.support_idx is not None])
            va = torch.cat([s.val_idx for s in self.sessions])
            te = torch.cat([s.test_idx for s in self.sessions])
            for a, b, name in ((tr, te, "train/test"), (tr, va, "train/val"), (va, te, "val/test")):
                if torch.isin(a, b).any():
                    raise AssertionError(f"{name} indices overlap")


def _class_order(classes: list[int], seed: int | None, order: Sequence[int] | None) -> list[int]:
    if order is not None:
        order = [int(c) for c in order]
        if sorted(order) != sorted(classes):
            raise ValueError("class_order must be a permutation of the classes present in the labels")
        return order
    if seed is None:
        return sorted(classes)
    g = torch.Generator().manual_seed(seed)
    return [classes[i] for i in torch.randperm(len(classes), generator=g).tolist()]


def _indices_of(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    if len(classes) == 0:
        return torch.empty(0, dtype=torch.long)
    return torch.nonzero(torch.isin(labels, torch.as_tensor(list(classes)))).flatten()


def task_sessions(
    train_labels: torch.Tensor | Sequence[int],
    test_labels: torch.Tensor | Sequence[int],
    num_tasks: int,
    class_order: Sequence[int] | None = None,
    seed: int | None = None,
) -> IncrementalSplit:
    """Split the classes into ``num_tasks`` equal tasks (class order: given, seeded shuffle, or sorted).

    With no ``class_order`` and ``seed=None`` the order is ``0..C-1`` and task ``t`` owns labels
    ``[t*C/T, (t+1)*C/T)``, the convention of most continual-learning code.
    """
    ytr, yte = _labels(train_labels, "train_labels"), _labels(test_labels, "test_labels")
    classes = sorted(torch.unique(ytr).tolist())
    if num_tasks < 1 or len(classes) % num_tasks != 0:
        raise ValueError(f"{len(classes)} classes cannot be split into {num_tasks} equal tasks")
    order = _class_order(classes, seed, class_order)
    per = len(classes) // num_tasks
    sessions = []
    for t in range(num_tasks):
        cs = order[t * per : (t + 1) * per]
        sessions.append(Session(t, cs, _indices_of(ytr, cs), _indices_of(yte, cs)))
    split = IncrementalSplit(sessions, order, protocol=f"class-il-{num_tasks}-tasks", seed=seed)
    split.check()
    return split


def few_shot_sessions(
    train_labels: torch.Tensor | Sequence[int],
    test_labels: torch.Tensor | Sequence[int],
    base_classes: int | Sequence[int],
    ways: int,
    shots: int,
    num_sessions: int | None = None,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    base_shots: int | None = None,
) -> IncrementalSplit:
    """FSCIL split: session 0 has the base classes (all training samples, or ``base_shots`` per class),
    sessions 1..S add ``ways`` new classes with ``shots`` seeded training samples each.

    ``base_classes`` is a count (the first classes of the order) or an explicit list. ``class_order``
    defaults to ascending ids (the TOPIC convention: CIFAR100 base = 0..59); the novel classes keep it.
    """
    ytr, yte = _labels(train_labels, "train_labels"), _labels(test_labels, "test_labels")
    if ways < 1 or shots < 1:
        raise ValueError("ways and shots must be >= 1")
    classes = sorted(torch.unique(ytr).tolist())
    order = _class_order(classes, None, class_order)
    if isinstance(base_classes, int):
        base = order[:base_classes]
    else:
        base = [int(c) for c in base_classes]
        missing = set(base) - set(classes)
        if missing:
            raise ValueError(f"base classes {sorted(missing)} have no training samples")
    rest = [c for c in order if c not in set(base)]
    max_sessions = len(rest) // ways
    if num_sessions is None:
        num_sessions = max_sessions
    if num_sessions > max_sessions:
        raise ValueError(f"{len(rest)} novel classes give at most {max_sessions} sessions of {ways} ways")
    g = torch.Generator().manual_seed(seed)

    def pick(cs: Sequence[int], k: int | None) -> torch.Tensor:
        out = []
        for c in cs:
            idx = torch.nonzero(ytr == c).flatten()
            if k is None:
                out.append(idx)
                continue
            if idx.numel() < k:
                raise ValueError(f"class {c} has {idx.numel()} training samples, fewer than {k} shots")
            out.append(idx[torch.randperm(idx.numel(), generator=g)[:k]].sort().values)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    sessions = [Session(0, list(base), pick(base, base_shots), _indices_of(yte, base))]
    for s in range(num_sessions):
        cs = rest[s * ways : (s + 1) * ways]
        sup = pick(cs, shots)
        sessions.append(Session(s + 1, cs, sup, _indices_of(yte, cs), support_idx=sup))
    split = IncrementalSplit(
        sessions, base + rest[: num_sessions * ways], protocol=f"fscil-{ways}way-{shots}shot", seed=seed
    )
    split.check()
    return split
