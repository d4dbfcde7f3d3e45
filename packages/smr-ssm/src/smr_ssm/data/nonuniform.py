"""Non-uniformly sampled sums of sines (spec §8, "Small real experiment"; spec §7 ``sample_signals``).

``u(t) = sum_{i=1}^{n} a_i sin(2 pi f_i t + phi_i)`` with ``f_i ~ U[f_lo, f_hi]``, ``a_i ~ U[a_lo, a_hi]``,
``phi_i ~ U[0, 2 pi)``, sampled on a grid of steps ``Delta_k``:

* ``"uniform"``: ``Delta_k = base_step``;
* ``"scaled"``: ``Delta_k = base_step * scale`` (a uniformly faster or slower grid);
* ``"jitter"``: ``Delta_k = base_step * scale * U[1 - jitter, 1 + jitter]`` per step.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GRIDS", "regression_batch", "sample_signals", "sampling_steps"]

GRIDS = ("uniform", "scaled", "jitter")


def sampling_steps(
    n: int,
    L: int,
    grid: str = "uniform",
    base_step: float = 0.02,
    scale: float = 1.0,
    jitter: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Steps ``Delta_k`` ``(n, L)`` of a sampling grid (see module docstring)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid: {GRIDS}")
    if base_step <= 0 or scale <= 0:
        raise ValueError("base_step and scale must be positive")
    step = base_step * (scale if grid != "uniform" else 1.0)
    steps = torch.full((n, L), step, dtype=torch.float64)
    if grid == "jitter":
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        steps = steps * (1 - jitter + 2 * jitter * torch.rand(n, L, generator=generator, dtype=torch.float64))
    return steps


def sample_signals(
    n: int,
    L: int,
    grid: str = "uniform",
    base_step: float = 0.02,
    scale: float = 1.0,
    jitter: float = 0.5,
    seed: int = 0,
    n_components: int = 3,
    freq_range: tuple[float, float] = (0.5, 3.0),
    amp_range: tuple[float, float] = (0.5, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values (n, L, 1) float32, times (n, L) float64)``; ``times[:, 0] = 0``."""
    if n < 1 or L < 1:
        raise ValueError(f"n and L must be positive, got n={n}, L={L}")
    g = torch.Generator().manual_seed(seed)
    f = torch.empty(n, n_components, dtype=torch.float64).uniform_(*freq_range, generator=g)
    a = torch.empty(n, n_components, dtype=torch.float64).uniform_(*amp_range, generator=g)
    phase = torch.rand(n, n_components, generator=g, dtype=torch.float64) * 2 * math.pi
    steps = sampling_steps(n, L, grid, base_step, scale, jitter, generator=g)
    times = torch.cumsum(steps, dim=1) - steps[:, :1]
    values = (
        a[:, None, :] * torch.sin(2 * math.pi * f[:, None, :] * times[..., None] + phase[:, None, :])
    ).sum(-1)
    return values.unsqueeze(-1).float(), times


def regression_batch(
    values: torch.Tensor, times: torch.Tensor, base_step: float, with_timesteps: bool = False
) -> dict[str, torch.Tensor]:
    """One-step-ahead regression: inputs ``u_{<=k}``, target ``u_{k+1}`` (spec §8); ``timesteps`` (the
    relative steps ``(t_k - t_{k-1}) / base_step``) only when ``with_timesteps`` (the model never sees
    them otherwise, spec §3.3)."""
    batch = {"input_values": values[:, :-1], "labels": values[:, 1:]}
    if with_timesteps:
        dt = torch.diff(times, dim=1, prepend=times[:, :1] - base_step)[:, :-1]
        batch["timesteps"] = (dt / base_step).float()
    return batch
