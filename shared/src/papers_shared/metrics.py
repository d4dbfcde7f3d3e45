"""Evaluation metrics shared by the packages.

Class-incremental metrics follow the usual definitions:

* ``a[t, s]`` is the accuracy on the test data of the classes introduced in session ``s``,
  measured after training session ``t`` (defined for ``s <= t``; the upper triangle is ignored).
* average incremental accuracy: mean over sessions of the accuracy on all classes seen so far;
* performance drop (PD): first-session accuracy minus last-session accuracy;
* forgetting (Chaudhry et al., ECCV 2018): for every group ``s < T`` the drop from the best earlier
  accuracy ``max_{t in [s, T-1]} a[t, s]`` to the final one ``a[T, s]``, averaged over all ``s < T``.
  The max runs over *every* earlier row and the mean over *every* earlier group (the off-by-one that
  Continvvm/continuum issue #281 fixed).

Attack metrics record the protocol next to the number (see :func:`success_rate_from_logits`).
Preference metrics (reward accuracy, win rate) serve the DPO package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "AccuracyMatrix",
    "RunReport",
    "SessionResult",
    "accuracy",
    "average_accuracy",
    "base_novel_accuracy",
    "forgetting",
    "harmonic_mean",
    "last_accuracy",
    "performance_drop",
    "preference_accuracy",
    "session_accuracy",
    "success_rate_from_logits",
    "win_rate",
]


def _as_1d(x: torch.Tensor | np.ndarray | Sequence[int], name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def accuracy(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]. ``pred`` is either class ids ``[n]`` or logits ``[n, C]``."""
    p = torch.as_tensor(pred)
    if p.ndim == 2:
        p = p.argmax(dim=1)
    p = _as_1d(p, "pred")
    t = _as_1d(y, "y")
    if p.shape != t.shape:
        raise ValueError(f"pred and y differ in length: {p.shape[0]} vs {t.shape[0]}")
    if p.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((p.cpu() == t.cpu()).float().mean())


def session_accuracy(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy on the joint test set of all classes seen so far (not episodic)."""
    return accuracy(pred, y)


def _as_accs(accs: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    a = np.asarray(torch.as_tensor(accs, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of per-session accuracies, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("per-session accuracies contain NaN or inf")
    return a


def average_accuracy(accs: Sequence[float]) -> float:
    """Average incremental accuracy: mean of the per-session accuracies (sessions 0..T)."""
    return float(_as_accs(accs).mean())


def last_accuracy(accs: Sequence[float]) -> float:
    """Accuracy after the last session."""
    return float(_as_accs(accs)[-1])


def performance_drop(accs: Sequence[float]) -> float:
    """PD = accuracy after session 0 minus accuracy after the last session."""
    a = _as_accs(accs)
    return float(a[0] - a[-1])


def harmonic_mean(base_acc: float, novel_acc: float) -> float:
    """``2ab/(a+b)``; 0 when either accuracy is 0."""
    a, b = float(base_acc), float(novel_acc)
    if a < 0 or b < 0:
        raise ValueError("accuracies must be non-negative")
    if a == 0.0 or b == 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def base_novel_accuracy(
    pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, base_classes: Sequence[int]
) -> tuple[float, float]:
    """Accuracy on test samples of base classes and of novel classes (NaN for an empty group)."""
    p = torch.as_tensor(pred)
    if p.ndim == 2:
        p = p.argmax(dim=1)
    p, t = _as_1d(p, "pred").cpu(), _as_1d(y, "y").cpu()
    is_base = torch.isin(t, torch.as_tensor(list(base_classes), dtype=t.dtype))
    out = []
    for mask in (is_base, ~is_base):
        out.append(float((p[mask] == t[mask]).float().mean()) if mask.any() else float("nan"))
    return out[0], out[1]


class AccuracyMatrix:
    """Lower-triangular accuracy matrix ``a[t, s]`` (row: after session t; column: class group s).

    >>> m = AccuracyMatrix(3)
    >>> m.set(0, 0, 0.9); m.set(1, 0, 0.7); m.set(1, 1, 0.8)
    """

    def __init__(self, num_sessions: int) -> None:
        if num_sessions < 1:
            raise ValueError("num_sessions must be >= 1")
        self.num_sessions = num_sessions
        self.values = np.full((num_sessions, num_sessions), np.nan, dtype=np.float64)

    @classmethod
    def from_array(cls, values: Sequence[Sequence[float]] | np.ndarray) -> AccuracyMatrix:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"accuracy matrix must be square, got shape {arr.shape}")
        m = cls(arr.shape[0])
        for t in range(arr.shape[0]):
            for s in range(t + 1):
                m.set(t, s, float(arr[t, s]))
        return m

    def set(self, t: int, s: int, value: float) -> None:
        if not (0 <= s <= t < self.num_sessions):
            raise IndexError(f"need 0 <= s <= t < {self.num_sessions}, got t={t}, s={s}")
        if not np.isfinite(value):
            raise ValueError(f"accuracy a[{t},{s}] is not finite: {value}")
        self.values[t, s] = value

    def row(self, t: int) -> np.ndarray:
        return self.values[t, : t + 1].copy()

    def completed_sessions(self) -> int:
        """Number of leading rows that are fully filled."""
        n = 0
        for t in range(self.num_sessions):
            if np.all(np.isfinite(self.values[t, : t + 1])):
                n += 1
            else:
                break
        return n

    def forgetting(self) -> float:
        return forgetting(self)

    def tolist(self) -> list[list[float | None]]:
        return [[None if not np.isfinite(v) else float(v) for v in row] for row in self.values]


def forgetting(matrix: AccuracyMatrix | np.ndarray | Sequence[Sequence[float]]) -> float:
    """Average forgetting after the last filled session ``T``.

    ``F = mean_{s=0}^{T-1} [ max_{t in [s, T-1]} a[t, s] - a[T, s] ]``; 0 when only one session exists.
    """
    m = matrix if isinstance(matrix, AccuracyMatrix) else AccuracyMatrix.from_array(matrix)
    n = m.completed_sessions()
    if n == 0:
        raise ValueError("the accuracy matrix has no completed session")
    T = n - 1
    if T == 0:
        return 0.0
    a = m.values
    drops = [np.max(a[s:T, s]) - a[T, s] for s in range(T)]
    return float(np.mean(drops))


@dataclass
class SessionResult:
    """Evaluation after one session: joint accuracy and per-group accuracies."""

    session: int
    accuracy: float
    group_accuracies: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    """A whole incremental run: per-session accuracy, the accuracy matrix and the summary metrics."""

    method: str
    dataset: str
    seed: int
    accs: list[float]
    acc_matrix: list[list[float | None]] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def avg(self) -> float:
        return average_accuracy(self.accs)

    @property
    def pd(self) -> float:
        return performance_drop(self.accs)

    @property
    def last(self) -> float:
        return last_accuracy(self.accs)

    @property
    def forgetting(self) -> float | None:
        if self.acc_matrix is None:
            return None
        arr = np.array([[np.nan if v is None else v for v in row] for row in self.acc_matrix])
        return forgetting(arr)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(avg=self.avg, pd=self.pd, last=self.last, forgetting=self.forgetting)
        return d

    def save(self, path: str | Path) -> None:
        from papers_shared.checkpoints import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def success_rate_from_logits(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> float:
    """Attack success rate from victim logits.

    Targeted: fraction classified as the target id ``labels``. Untargeted: fraction *not* classified
    as the true label ``labels``. Report it with the protocol (sub-source, all-source, ...), eps and steps.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    labels = _as_1d(labels, "labels").to(logits.device)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError("logits and labels differ in batch size")
    hit = logits.argmax(dim=1) == labels
    return float((hit if targeted else ~hit).float().mean())


def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Reward accuracy: fraction of pairs where the chosen response gets the higher (implicit) reward."""
    c, r = torch.as_tensor(chosen_rewards).flatten(), torch.as_tensor(rejected_rewards).flatten()
    if c.shape != r.shape or c.numel() == 0:
        raise ValueError("chosen and rejected rewards must be non-empty and of equal length")
    return float((c > r).float().mean())


def win_rate(scores_a: torch.Tensor, scores_b: torch.Tensor, tie: float = 0.5) -> float:
    """Win rate of A over B from per-prompt scores (e.g. a reward model); ties count ``tie``."""
    a, b = torch.as_tensor(scores_a).flatten().double(), torch.as_tensor(scores_b).flatten().double()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError("score lists must be non-empty and of equal length")
    wins = (a > b).double() + tie * (a == b).double()
    return float(wins.mean())
