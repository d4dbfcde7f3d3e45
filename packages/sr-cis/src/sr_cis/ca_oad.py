"""CA-OAD: Confidence-Aware Online Anomaly Detection, which test samples go to the large model.

The paper names the module and its role (route low-confidence inputs to the large model); the rule is
ours. A score ``s`` per sample (high = confident) is judged against the stream seen so far:

* ``rule="quantile"`` (default, ours): flag ``s`` when it is below the ``route_share`` quantile of the
  scores seen so far (a calibrated threshold: the routed share follows the configuration whatever the
  score's distribution);
* ``rule="zscore"`` (the earlier rule): Welford running mean / std, flag ``(s - mu) / sigma < -z``,
  with ``z = 0.842`` (the 20 % lower tail of N(0, 1)): the threshold of the same authors' ICL code,
  ``utils/training.py:normalize_and_find_outliers`` (applied per test batch to the small model's top
  score in ``evaluate_brain_co``; repository Biqing-Qi/Interactive-continual-Learning-Fast-and-Slow-Thinking,
  commit 17ab1c68).

While fewer than ``warmup`` samples have been seen the same rule is applied within the mini-batch;
``scope="batch"`` uses the mini-batch everywhere (ICL's rule with ``rule="zscore"``).
"""

from __future__ import annotations

import bisect
import math

import torch

__all__ = [
    "OnlineConfidenceAnomalyDetector",
    "RandomRouter",
    "batch_quantile_flags",
    "batch_zscore_flags",
    "confidence_score",
]


def confidence_score(logits: torch.Tensor, score: str = "max_prob") -> torch.Tensor:
    """Confidence ``[B]`` of logits ``[B, C]``; higher is more confident.

    ``max_prob`` (max softmax), ``max_logit``, ``margin`` (top-1 minus top-2 probability),
    ``distance_margin`` (top-1 minus top-2 logit: with nearest-prototype logits ``-||h - p_c||^2 / 2``
    this is half the gap between the squared distances to the two nearest prototypes), ``energy``
    (``logsumexp`` of the logits, the negative free energy).
    """
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [B, C] with C >= 1, got {tuple(logits.shape)}")
    if score == "max_logit":
        return logits.max(1).values
    if score == "energy":
        return torch.logsumexp(logits, 1)
    if score == "distance_margin":
        if logits.shape[1] < 2:
            return logits[:, 0]
        top = logits.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]
    p = logits.softmax(1)
    if score == "max_prob":
        return p.max(1).values
    if score == "margin":
        if p.shape[1] < 2:
            return p[:, 0]
        top = p.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]
    raise ValueError(
        f"score must be one of distance_margin, margin, max_prob, max_logit, energy; got {score!r}"
    )


def batch_zscore_flags(conf: torch.Tensor, z_threshold: float) -> torch.Tensor:
    """ICL rule: ``(c - mean(batch)) / std(batch) < -z`` (unbiased std; no flag when std is 0 or B < 2)."""
    c = conf.double()
    if c.numel() < 2:
        return torch.zeros(c.shape, dtype=torch.bool)
    sd = c.std()
    if not sd > 0:
        return torch.zeros(c.shape, dtype=torch.bool)
    return (c - c.mean()) / sd < -z_threshold


def _quantile_value(sorted_scores: list[float], share: float) -> float:
    """The ``floor(share * n)``-th smallest value (0-based) of a sorted list: about ``share`` lie below it."""
    return sorted_scores[min(int(math.floor(share * len(sorted_scores))), len(sorted_scores) - 1)]


def batch_quantile_flags(conf: torch.Tensor, share: float) -> torch.Tensor:
    """Flag the scores below the ``share`` quantile of the batch (no flag when B < 2)."""
    c = conf.double()
    if c.numel() < 2:
        return torch.zeros(c.shape, dtype=torch.bool)
    return c < _quantile_value(sorted(c.tolist()), share)


class OnlineConfidenceAnomalyDetector:
    """Stateful detector; ``update_and_flag(scores)`` judges, then absorbs every sample in stream order."""

    def __init__(
        self,
        z_threshold: float = 0.842,
        warmup: int = 32,
        scope: str = "online",
        score: str = "max_prob",
        rule: str = "zscore",
        route_share: float = 0.2,
    ) -> None:
        if scope not in ("online", "batch"):
            raise ValueError(f"scope must be 'online' or 'batch', got {scope!r}")
        if rule not in ("zscore", "quantile"):
            raise ValueError(f"rule must be 'zscore' or 'quantile', got {rule!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if not math.isfinite(z_threshold):
            raise ValueError("z_threshold must be finite")
        if not 0.0 < route_share < 1.0:
            raise ValueError(f"route_share must be in (0, 1), got {route_share}")
        self.z_threshold = float(z_threshold)
        self.warmup = int(warmup)
        self.scope = scope
        self.score = score
        self.rule = rule
        self.route_share = float(route_share)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.sorted: list[float] = []

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n >= 2 else 0.0

    def _update(self, c: float) -> None:
        self.n += 1
        d = c - self.mean
        self.mean += d / self.n
        self.m2 += d * (c - self.mean)
        if self.rule == "quantile":
            bisect.insort(self.sorted, c)

    def _batch(self, conf: torch.Tensor) -> torch.Tensor:
        if self.rule == "quantile":
            return batch_quantile_flags(conf, self.route_share)
        return batch_zscore_flags(conf, self.z_threshold)

    def _online(self, c: float) -> bool:
        if self.rule == "quantile":
            return self.n >= 2 and c < _quantile_value(self.sorted, self.route_share)
        sd = self.std
        return self.n >= 2 and sd > 0 and (c - self.mean) / sd < -self.z_threshold

    def update_and_flag(self, conf: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B]``: anomalous (route to the large model) or not."""
        if not isinstance(conf, torch.Tensor) or conf.ndim != 1:
            raise ValueError("conf must be a 1-D tensor of confidences")
        if not torch.isfinite(conf).all():
            raise ValueError("confidences contain NaN or inf")
        batch = self._batch(conf)
        if self.scope == "batch":
            return batch
        flags = torch.zeros(conf.shape, dtype=torch.bool)
        for i, c in enumerate(conf.double().tolist()):
            flags[i] = bool(batch[i]) if self.n < self.warmup else self._online(c)
            self._update(c)
        return flags

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "sorted": list(self.sorted)}

    def load_state_dict(self, d: dict) -> None:
        self.n, self.mean, self.m2 = int(d["n"]), float(d["mean"]), float(d["m2"])
        self.sorted = [float(v) for v in d.get("sorted", [])]


class RandomRouter:
    """Baseline ``SRCISRandomRoute``: flag a seeded random ``fraction`` of samples (ours)."""

    def __init__(self, fraction: float = 0.2, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)

    def update_and_flag(self, conf: torch.Tensor) -> torch.Tensor:
        return torch.rand(conf.shape[0], generator=self.gen) < self.fraction
