"""What every method of the session runner shares: the session context, the method protocol and
small training utilities (ours: one runner and one evaluator for all methods).

A method implements ``setup(ctx0, pretrained)``, ``fit_session(ctx) -> dict``,
``logits(ctx, node_idx) -> [n, K_tot]`` (one call scores one node set) and
``state_dict()/load_state_dict()`` (for resume). The runner owns splits, graphs and evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from mecoin.config import ProtocolConfig
from mecoin.data import GFSCILTask
from papers_shared.metrics import SessionResult, session_accuracy

__all__ = [
    "GFSCILMethod",
    "SessionContext",
    "clip_grad_norm",
    "evaluate_session",
    "legacy_train_mode",
    "masked_argmax",
    "unseen_mask",
]


@dataclass
class SessionContext:
    """Session ``t`` of a task: its classes, its graph and the labelled node sets visible to methods."""

    task: GFSCILTask
    t: int
    protocol: ProtocolConfig
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    device: torch.device
    progress: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def session(self):
        return self.task.split[self.t]

    @property
    def data(self):
        return self.task.data

    @property
    def new_classes(self) -> list[int]:
        return list(self.session.classes)

    @property
    def seen_classes(self) -> list[int]:
        return self.task.split.seen_classes(self.t)

    @property
    def old_classes(self) -> list[int]:
        return self.task.split.seen_classes(self.t - 1) if self.t > 0 else []

    def _idx(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def supports(self, t: int | None = None) -> torch.Tensor:
        """The labelled few-shot nodes of session ``t`` (session 0: ``shots`` per base class)."""
        s = self.task.split[self.t if t is None else t]
        return self._idx(s.support_idx if s.support_idx is not None else s.train_idx)

    def cumulative_supports(self) -> torch.Tensor:
        """Supports of sessions ``0..t`` (the code's support replay, ``cl_train``)."""
        return torch.cat([self.supports(s) for s in range(self.t + 1)])

    def val_idx(self) -> torch.Tensor:
        """Validation nodes of all seen classes (the code's ``cl_val``)."""
        return self._idx(torch.cat([self.task.split[s].val_idx for s in range(self.t + 1)]))

    def test_groups(self) -> list[torch.Tensor]:
        """Test nodes of each session group ``s ≤ t`` (columns of the accuracy matrix)."""
        return [self._idx(self.task.split[s].test_idx) for s in range(self.t + 1)]

    def base_train_idx(self) -> torch.Tensor:
        return self._idx(self.task.pretrain_train_idx)

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.data.y[idx]

    def mask(self) -> list[int] | None:
        """Classes allowed at prediction: the seen ones with ``mask_unseen``, else all."""
        return self.seen_classes if self.protocol.mask_unseen else None


def unseen_mask(num_classes: int, allowed: Sequence[int] | None, device) -> torch.Tensor | None:
    """Additive ``[K]`` mask: 0 on allowed classes, -inf elsewhere (None = no mask)."""
    if allowed is None:
        return None
    m = torch.full((num_classes,), float("-inf"), device=device)
    m[torch.as_tensor(list(allowed), dtype=torch.long, device=device)] = 0.0
    return m


def masked_argmax(logits: torch.Tensor, allowed: Sequence[int] | None) -> torch.Tensor:
    """``argmax`` over the allowed classes only (``mask_unseen``), else over every output."""
    m = unseen_mask(logits.shape[-1], allowed, logits.device)
    return (logits if m is None else logits + m).argmax(-1)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` that also handles sparse gradients (MRaM with ``sparse_adam``)."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append((p, p.grad._values()))
        else:
            grads.append((p, p.grad))
    if not grads:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in grads]))
    if max_norm > 0:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p, _ in grads:
            if p.grad.is_sparse:
                p.grad = p.grad * float(scale)
            else:
                p.grad.mul_(scale)
    return float(total)


class GFSCILMethod(ABC):
    """Base class of the methods driven by :func:`mecoin.runner.run_method`."""

    name = "method"

    @abstractmethod
    def setup(self, ctx: SessionContext, pretrained) -> None:
        """Build the method from the pre-trained encoder/classifier (once per run); ``ctx`` is the
        session-0 context (its graph is the base graph)."""

    @abstractmethod
    def fit_session(self, ctx: SessionContext) -> dict:
        """Learn session ``ctx.t``; returns a small log (floats)."""

    @abstractmethod
    def logits(self, ctx: SessionContext, node_idx: torch.Tensor) -> torch.Tensor:
        """Scores ``[n, K_tot]`` of one node set on the session graph (eval mode)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the state a method keeps between sessions (reported, not used)."""
        return {}


def legacy_train_mode(t: int, epoch: int) -> bool:
    """Module mode of the code's training step ``epoch`` of session ``t`` (official ``train.py:train``): ``train()`` once
    before the session loop and whenever ``epoch % 100 == 1``; every validation leaves ``eval()`` on."""
    return (t == 0 and epoch == 0) or epoch % 100 == 1


@torch.no_grad()
def evaluate_session(method: GFSCILMethod, ctx: SessionContext) -> SessionResult:
    """Accuracy on the test nodes of all seen classes, scored as one set (the session accuracy), and
    per session group (a row of the accuracy matrix): sliced from the joint prediction by default,
    re-scored group by group with ``legacy_group_eval`` (official ``train.py:train`` scores each group in its own batch)."""
    groups = ctx.test_groups()
    joint = torch.cat(groups)
    allowed = ctx.mask()
    pred = masked_argmax(method.logits(ctx, joint), allowed)
    y = ctx.labels(joint)
    acc = session_accuracy(pred.cpu(), y.cpu())
    accs, start = [], 0
    for g in groups:
        if ctx.protocol.legacy_group_eval:
            p = masked_argmax(method.logits(ctx, g), allowed)
        else:
            p = pred[start : start + g.numel()]
        start += g.numel()
        accs.append(session_accuracy(p.cpu(), ctx.labels(g).cpu()))
    return SessionResult(ctx.t, acc, accs)
