"""CA-OAD: Confidence-Aware Online Anomaly Detection (spec §3.7).

Online z-score of the fast path's confidence (Welford running mean / variance over the test stream):
a sample is anomalous when ``(c - mu) / sigma < -z_tau`` (unusually low confidence). While fewer than
``warmup`` samples have been seen, the ICL batch rule judges instead: z-score within the mini-batch.
``scope="batch"`` is the ICL rule everywhere.
"""

from __future__ import annotations

import math

import torch

__all__ = ["OnlineConfidenceAnomalyDetector", "batch_zscore_flags", "confidence_score"]


def confidence_score(logits: torch.Tensor, score: str = "max_prob") -> torch.Tensor:
    """``max_prob`` (max softmax), ``max_logit`` or ``margin`` (top-1 minus top-2 probability), ``[B]``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got {tuple(logits.shape)}")
    if score == "max_logit":
        return logits.max(1).values
    p = logits.softmax(1)
    if score == "max_prob":
        return p.max(1).values
    if score == "margin":
        if p.shape[1] < 2:
            return p[:, 0]
        top = p.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]
    raise ValueError(f"score must be 'max_prob', 'max_logit' or 'margin', got {score!r}")


def batch_zscore_flags(conf: torch.Tensor, z_threshold: float) -> torch.Tensor:
    """ICL rule: ``(c - mean(batch)) / std(batch) < -z`` (unbiased std; no flag when std is 0 or B < 2)."""
    c = conf.double()
    if c.numel() < 2:
        return torch.zeros(c.shape, dtype=torch.bool)
    sd = c.std()
    if not sd > 0:
        return torch.zeros(c.shape, dtype=torch.bool)
    return (c - c.mean()) / sd < -z_threshold


class OnlineConfidenceAnomalyDetector:
    """Stateful detector; ``update_and_flag(conf)`` judges then absorbs every sample in stream order."""

    def __init__(
        self, z_threshold: float = 0.842, warmup: int = 32, scope: str = "online", score: str = "max_prob"
    ) -> None:
        if scope not in ("online", "batch"):
            raise ValueError(f"scope must be 'online' or 'batch', got {scope!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if not math.isfinite(z_threshold):
            raise ValueError("z_threshold must be finite")
        self.z_threshold = float(z_threshold)
        self.warmup = int(warmup)
        self.scope = scope
        self.score = score
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n >= 2 else 0.0

    def _update(self, c: float) -> None:
        self.n += 1
        d = c - self.mean
        self.mean += d / self.n
        self.m2 += d * (c - self.mean)

    def update_and_flag(self, conf: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B]``: anomalous (route to the large model) or not."""
        if not isinstance(conf, torch.Tensor) or conf.ndim != 1:
            raise ValueError("conf must be a 1-D tensor of confidences")
        if not torch.isfinite(conf).all():
            raise ValueError("confidences contain NaN or inf")
        batch = batch_zscore_flags(conf, self.z_threshold)
        if self.scope == "batch":
            return batch
        flags = torch.zeros(conf.shape, dtype=torch.bool)
        for i, c in enumerate(conf.double().tolist()):
            if self.n < self.warmup:
                flags[i] = bool(batch[i])
            else:
                sd = self.std
                flags[i] = self.n >= 2 and sd > 0 and (c - self.mean) / sd < -self.z_threshold
            self._update(c)
        return flags

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, d: dict) -> None:
        self.n, self.mean, self.m2 = int(d["n"]), float(d["mean"]), float(d["m2"])


class RandomRouter:
    """Baseline ``SRCISRandomRoute``: flag a seeded random ``fraction`` of samples (spec §4)."""

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
