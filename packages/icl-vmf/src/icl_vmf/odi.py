"""vMF-ODI: z-score outlier detection on System1's best cosine (paper Sec. 3, vMF-ODI; official
``utils/training.py:normalize_and_find_outliers``, commit 8c8ad10)."""

from __future__ import annotations

import torch

__all__ = ["VMFOutlierDetector"]


class VMFOutlierDetector:
    """Flag hard samples of a test mini-batch for System2.

    ``r_i = max_c s_ic`` (the best cosine, the vMF log-density up to constants);
    ``u_i = (r_i - mean(r)) / std(r)`` with the unbiased std; ``hard = u_i < z_threshold``
    (-0.842: the 20 % lower tail of N(0, 1)). A batch of one or constant scores gives NaN, hence no
    hard sample, exactly as the code's arithmetic.

    ``scope="running"`` [ours] standardises with the mean/std of every score seen since the last
    :meth:`reset`, this batch included (Chan's parallel update), so small batches are judged against
    the whole stream. ``mode="random"`` flags each sample with probability ``random_fraction``
    (ablation: routing without the detector).
    """

    def __init__(
        self,
        z_threshold: float = -0.842,
        scope: str = "batch",
        mode: str = "zscore",
        random_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        if scope not in ("batch", "running"):
            raise ValueError(f"scope must be 'batch' or 'running', got {scope!r}")
        if mode not in ("zscore", "random"):
            raise ValueError(f"mode must be 'zscore' or 'random', got {mode!r}")
        if not 0 <= random_fraction <= 1:
            raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
        self.z_threshold, self.scope, self.mode = float(z_threshold), scope, mode
        self.random_fraction = random_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def _running(self, r: torch.Tensor) -> tuple[float, float]:
        nb = r.numel()
        mb = float(r.mean())
        m2b = float(((r - mb) ** 2).sum())
        n = self.n + nb
        d = mb - self.mean
        self.mean += d * nb / n
        self.m2 += m2b + d * d * self.n * nb / n
        self.n = n
        std = (self.m2 / (n - 1)) ** 0.5 if n > 1 else float("nan")
        return self.mean, std

    def zscores(self, best_scores: torch.Tensor) -> torch.Tensor:
        r = best_scores.detach().double()
        if self.scope == "batch":
            if r.numel() < 2:  # unbiased std undefined: NaN, no hard sample (code arithmetic)
                return torch.full_like(r, float("nan"))
            return (r - r.mean()) / r.std()
        mean, std = self._running(r)
        return (r - mean) / std

    def __call__(self, best_scores: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``[B]`` of hard samples."""
        if best_scores.ndim != 1:
            raise ValueError(f"best_scores must be 1-D [B], got shape {tuple(best_scores.shape)}")
        if not best_scores.is_floating_point():
            raise TypeError(f"best_scores must be floating point, got {best_scores.dtype}")
        if best_scores.numel() and not torch.isfinite(best_scores).all():
            raise ValueError("best_scores contain NaN or inf")
        if best_scores.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=best_scores.device)
        if self.mode == "random":
            flags = torch.rand(best_scores.numel(), generator=self.generator) < self.random_fraction
            return flags.to(best_scores.device)
        u = self.zscores(best_scores)
        return (u < self.z_threshold).to(best_scores.device)  # NaN compares False: no hard sample
