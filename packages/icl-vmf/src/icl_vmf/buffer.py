"""Class-balanced reservoir replay buffer (official ``utils/buffer.py:Buffer.add_data`` / ``reservoir_class`` /
``get_data``, commit 8c8ad10)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ClassBalancedReservoir"]


class ClassBalancedReservoir:
    """Each class owns ``per_class = capacity // num_classes`` fixed slots with its own reservoir sampling.

    The ``n``-th sample of class ``c`` (0-based) fills slot ``n`` while ``n < per_class``; afterwards it
    replaces slot ``r ~ U{0..n}`` when ``r < per_class`` (so every sample of the class is kept with
    probability ``per_class / (n_c)``). Stored images are the non-augmented inputs; optional per-sample
    logits are kept for DER++. ``sample(m)`` draws ``min(m, len(self))`` filled slots uniformly without
    replacement and applies ``transform`` to the batch.

    ``legacy_sampling=True`` reproduces the code: draws come from the first ``count`` slot *positions*
    (``count`` = number of filled slots) whatever their state, so while a class is still filling its
    slots, empty slots (zero images, label 0) can be replayed and filled slots of later classes cannot.

    ``admit_below`` (screening admission, official ``Buffer.add_data_our``, off by default): see :meth:`add`.
    """

    def __init__(
        self,
        capacity: int,
        num_classes: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        legacy_sampling: bool = False,
    ) -> None:
        if capacity < 0 or num_classes < 1:
            raise ValueError(f"need capacity >= 0 and num_classes >= 1, got {capacity}, {num_classes}")
        per = capacity // num_classes if capacity else 0
        if capacity and per == 0:
            raise ValueError(
                f"capacity {capacity} gives no slot per class for {num_classes} classes "
                f"(the class-balanced buffer needs capacity >= num_classes)"
            )
        if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.uint8):
            raise ValueError(f"unsupported storage dtype {dtype}")
        self.capacity, self.num_classes, self.per_class = capacity, num_classes, per
        self.device, self.dtype = torch.device(device), dtype
        self.legacy_sampling = legacy_sampling
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = torch.zeros(num_classes, dtype=torch.long)
        self.count = 0  # filled slots
        self.filled = torch.zeros(num_classes * per, dtype=torch.bool)
        self.labels = torch.zeros(num_classes * per, dtype=torch.long, device=self.device)
        self.images: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.min_score = torch.full((num_classes,), float("inf"))

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return self.count

    def is_empty(self) -> bool:
        return self.count == 0

    def per_class_counts(self) -> torch.Tensor:
        """Filled slots per class ``[num_classes]``."""
        if self.per_class == 0:
            return torch.zeros(self.num_classes, dtype=torch.long)
        return self.filled.view(self.num_classes, self.per_class).sum(1)

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.uint8:
            return (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return x.to(self.dtype)

    def _load(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if self.dtype == torch.uint8 else x.float()

    def _slot(self, c: int, keep_if_full: bool = True) -> int:
        n = int(self.seen[c])
        if n < self.per_class:
            return n
        # code: r ~ U{0..n} (np.random.randint(0, n + 1)); the screening path draws U{0..n-1}
        r = int(torch.randint(0, n + 1 if keep_if_full else n, (1,), generator=self.generator))
        return r if r < self.per_class else -1

    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logits: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> int:
        """Offer a batch; returns the number of samples written.

        With ``scores`` (screening admission) a sample is offered only when its score is below the
        lowest score seen so far for its class (which is then updated), and its reservoir draw uses
        ``U{0..n-1}`` as in the code. Call :meth:`reset_screening` at task starts.
        """
        if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x [{tuple(x.shape)}] and y [{tuple(y.shape)}] must share the batch dimension")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("buffer images contain NaN or inf")
        if self.per_class == 0:
            return 0
        if self.images is None:
            self.images = torch.zeros(
                (self.capacity_slots, *x.shape[1:]), dtype=self.dtype, device=self.device
            )
        elif tuple(self.images.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"image shape {tuple(x.shape[1:])} differs from stored {tuple(self.images.shape[1:])}"
            )
        if logits is not None and self.logits is None:
            self.logits = torch.zeros((self.capacity_slots, logits.shape[1]), device=self.device)
        written = 0
        for i in range(y.shape[0]):
            c = int(y[i])
            if scores is not None:
                s = float(scores[i])
                if not s < float(self.min_score[c]):
                    continue
                self.min_score[c] = s
                slot = self._slot(c, keep_if_full=False)
            else:
                slot = self._slot(c)
            self.seen[c] += 1
            if slot < 0:
                continue
            idx = c * self.per_class + slot
            if not self.filled[idx]:
                self.filled[idx] = True
                self.count += 1
            self.images[idx] = self._store(x[i].detach().to(self.device))
            self.labels[idx] = c
            if logits is not None:
                self.logits[idx] = logits[i].detach().to(self.device, torch.float32)
            written += 1
        return written

    @property
    def capacity_slots(self) -> int:
        return self.num_classes * self.per_class

    def reset_screening(self) -> None:
        self.min_score.fill_(float("inf"))

    def sample(
        self,
        m: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        with_logits: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` (and ``logits``) of ``min(m, len(self))`` distinct slots; ``transform`` maps the batch."""
        if self.count == 0 or self.images is None:
            raise RuntimeError("cannot sample from an empty buffer")
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        if self.legacy_sampling:
            pool = torch.arange(min(self.count, self.capacity_slots))
        else:
            pool = self.filled.nonzero().flatten()
        pick = pool[torch.randperm(pool.numel(), generator=self.generator)[: min(m, pool.numel())]]
        pick = pick.to(self.device)
        x = self._load(self.images[pick])
        if transform is not None:
            x = transform(x)
        out: tuple[torch.Tensor, ...] = (x, self.labels[pick])
        if with_logits:
            if self.logits is None:
                raise RuntimeError("this buffer stores no logits")
            out = (*out, self.logits[pick])
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen.clone(),
            "count": self.count,
            "filled": self.filled.clone(),
            "labels": self.labels.cpu().clone(),
            "images": None if self.images is None else self.images.cpu().clone(),
            "logits": None if self.logits is None else self.logits.cpu().clone(),
            "min_score": self.min_score.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["filled"].numel() != self.capacity_slots:
            raise ValueError("buffer state has a different capacity / number of classes")
        self.seen = state["seen"].clone()
        self.count = int(state["count"])
        self.filled = state["filled"].clone()
        self.labels = state["labels"].to(self.device)
        self.images = None if state["images"] is None else state["images"].to(self.device)
        self.logits = None if state["logits"] is None else state["logits"].to(self.device)
        self.min_score = state["min_score"].clone()
        self.generator.set_state(state["generator"])
