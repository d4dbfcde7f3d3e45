"""Fast/slow interaction: System1 predicts, vMF-ODI flags hard samples, System2 may overrule (paper Fig. 1;
official ``utils/training.py:evaluate_brain_co``, commit 8c8ad10)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from icl_vmf.odi import VMFOutlierDetector
from icl_vmf.system2 import System2

__all__ = ["InteractionInfo", "InteractionStats", "InteractiveClassifier"]


@dataclass
class InteractionInfo:
    """What happened to one batch (indices refer to the batch)."""

    system1_pred: torch.Tensor
    hard: torch.Tensor  # bool [B]
    candidates: list[list[int]] = field(default_factory=list)  # per hard sample, class ids best first
    system2_raw: list[str] = field(default_factory=list)
    system2_choice: list[int | None] = field(default_factory=list)  # class id or None (fallback)
    changed: torch.Tensor | None = None  # bool [B]: final != System1
    scores: torch.Tensor | None = None  # System1 scores [B, K]
    class_ids: torch.Tensor | None = None  # [K]


@dataclass
class InteractionStats:
    """Counters accumulated over an evaluation (the official ``evaluate_brain_co`` logging, plus fix/harm rates)."""

    total: int = 0
    hard: int = 0
    hard_correct_s1: int = 0  # System1 right on hard samples
    easy_correct_s1: int = 0  # System1 right on unflagged samples
    routed: int = 0  # hard samples sent to System2
    answered: int = 0  # System2 answer mapped to a candidate
    fixed: int = 0  # System1 wrong -> final right
    harmed: int = 0  # System1 right -> final wrong
    true_in_candidates: int = 0

    def update(self, info: InteractionInfo, final: torch.Tensor, y: torch.Tensor) -> None:
        s1_ok = (info.system1_pred == y).cpu()
        ok = (final == y).cpu()
        hard = info.hard.cpu()
        self.total += y.numel()
        self.hard += int(hard.sum())
        self.hard_correct_s1 += int((s1_ok & hard).sum())
        self.easy_correct_s1 += int((s1_ok & ~hard).sum())
        self.routed += len(info.system2_raw)
        self.answered += sum(c is not None for c in info.system2_choice)
        self.fixed += int((~s1_ok & ok).sum())
        self.harmed += int((s1_ok & ~ok).sum())
        yh = y.cpu()[hard]
        self.true_in_candidates += sum(int(t) in c for t, c in zip(yh.tolist(), info.candidates))

    def merge(self, other: InteractionStats) -> InteractionStats:
        """Add ``other``'s counters to these (evaluation rows computed by several processes)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, float]:
        easy = self.total - self.hard
        return {
            "total": self.total,
            "hard": self.hard,
            "hard_fraction": self.hard / self.total if self.total else float("nan"),
            "system1_acc_hard": self.hard_correct_s1 / self.hard if self.hard else float("nan"),
            "system1_acc_easy": self.easy_correct_s1 / easy if easy else float("nan"),
            "routed": self.routed,
            "answered": self.answered,
            "fixed": self.fixed,
            "harmed": self.harmed,
            "true_in_candidates": self.true_in_candidates,
        }


class InteractiveClassifier:
    """``predict(x)``: System1 scores -> argmax; for ODI-flagged samples System2 sees the image and the
    names of System1's top-``k`` classes; an answer mapped to exactly one candidate replaces the
    prediction, anything else keeps System1's (fallback).

    ``scores_fn(x) -> (scores [B, K], class_ids [K])`` is System1: a :class:`~icl_vmf.system1.System1`
    (its ``scores``) or any callable giving class scores (e.g. a baseline's logits). ``class_names[c]``
    names class id c.
    """

    def __init__(
        self,
        scores_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | Any,
        system2: System2 | None = None,
        detector: VMFOutlierDetector | None = None,
        k: int = 3,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if system2 is not None and class_names is None:
            raise ValueError("System2 needs class_names to build its prompts")
        from icl_vmf.system1 import System1

        self.scores_fn = scores_fn.scores if isinstance(scores_fn, System1) else scores_fn
        if not callable(self.scores_fn):
            raise TypeError("scores_fn must be a System1 or a callable x -> (scores, class_ids)")
        self.system2 = system2
        self.detector = detector if detector is not None else VMFOutlierDetector()
        self.k = k
        self.class_names = list(class_names) if class_names is not None else None

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, y: torch.Tensor | None = None, use_system2: bool = True
    ) -> tuple[torch.Tensor, InteractionInfo]:
        """Final class ids ``[B]`` and the :class:`InteractionInfo`; ``y`` is read only by oracles."""
        scores, ids = self.scores_fn(x)
        if scores.ndim != 2 or scores.shape[0] != x.shape[0]:
            raise ValueError(f"scores must be [B, K] with B = {x.shape[0]}, got {tuple(scores.shape)}")
        best, arg = scores.max(1)
        ids = ids.to(scores.device)
        s1_pred = ids[arg]
        hard = self.detector(best.float())
        info = InteractionInfo(system1_pred=s1_pred, hard=hard, scores=scores, class_ids=ids)
        pred = s1_pred.clone()
        hard_idx = hard.nonzero().flatten()
        if use_system2 and self.system2 is not None and hard_idx.numel():
            k = min(self.k, scores.shape[1])
            top = ids[scores[hard_idx].topk(k, dim=1).indices]  # [h, k] class ids, best first
            info.candidates = top.tolist()
            names = [[self.class_names[c] for c in row] for row in info.candidates]
            truth = None if y is None else [self.class_names[int(c)] for c in y[hard_idx].tolist()]
            out = self.system2.choose([x[i].detach().cpu() for i in hard_idx.tolist()], names, truth)
            info.system2_raw = list(out.raw)
            for j, (i, choice) in enumerate(zip(hard_idx.tolist(), out.choices)):
                cls = None if choice is None else info.candidates[j][choice]
                info.system2_choice.append(cls)
                if cls is not None:
                    pred[i] = cls
        elif hard_idx.numel():
            k = min(self.k, scores.shape[1])
            info.candidates = ids[scores[hard_idx].topk(k, dim=1).indices].tolist()
        info.changed = pred != s1_pred
        return pred, info
