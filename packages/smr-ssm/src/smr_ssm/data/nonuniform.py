"""Non-uniformly sampled sums of sines: the sampling-shift tasks of the quick reproduction (ours).

A signal is ``u(t) = sum_i a_i sin(2 pi f_i t + phi_i)`` with ``f_i ~ U[freq_range]``,
``a_i ~ U[amp_range]``, ``phi_i ~ U[0, 2 pi)`` (:class:`SignalBank` keeps the parameters, so an oracle
can evaluate the continuous signal anywhere). Two tasks, each a :class:`SamplingTask` of inputs, targets,
the true relative steps and the oracle's floor:

* :func:`observed_steps_task` - the sampling rate is piecewise constant with ``regimes`` segments per
  sequence, each segment's relative step ``tau ~ U[step_range]``; the time stamps are observed: the input
  at position ``k`` is ``(u_k + noise, tau_k)`` with ``tau_k = (t_k - t_{k-1}) / base_step``; the target
  is ``u(t_k + horizon * base_step) + noise``. The step is thus known from the history (it is the gap
  between the last two time stamps), and a change of step is something a model can adapt to. The oracle
  knows the continuous signal: its MSE is that of the target noise.
* :func:`grid_task` - the earlier task: one-step-ahead prediction on a uniform, rescaled or jittered
  grid (:func:`sampling_steps`), time never shown; under jitter the next step is random, and the
  oracle's best guess averages the signal over the step distribution (:func:`next_step_floor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "GRIDS",
    "SamplingTask",
    "SignalBank",
    "grid_task",
    "next_step_floor",
    "observed_steps_task",
    "regime_steps",
    "regression_batch",
    "sample_signals",
    "sampling_steps",
]

GRIDS = ("uniform", "scaled", "jitter")


@dataclass
class SignalBank:
    """Parameters of ``n`` sums of sines: amplitudes, frequencies and phases, each ``(n, components)``."""

    amp: torch.Tensor
    freq: torch.Tensor
    phase: torch.Tensor

    @classmethod
    def sample(
        cls,
        n: int,
        n_components: int = 3,
        freq_range: tuple[float, float] = (0.5, 3.0),
        amp_range: tuple[float, float] = (0.5, 1.0),
        generator: torch.Generator | None = None,
    ) -> SignalBank:
        f = torch.empty(n, n_components, dtype=torch.float64).uniform_(*freq_range, generator=generator)
        a = torch.empty(n, n_components, dtype=torch.float64).uniform_(*amp_range, generator=generator)
        phase = torch.rand(n, n_components, generator=generator, dtype=torch.float64) * 2 * math.pi
        return cls(a, f, phase)

    def __call__(self, times: torch.Tensor) -> torch.Tensor:
        """``u(times)`` for ``times`` ``(n, ...)`` (float64)."""
        shape = (self.amp.shape[0],) + (1,) * (times.ndim - 1) + (self.amp.shape[1],)
        a, f, p = (x.reshape(shape) for x in (self.amp, self.freq, self.phase))
        return (a * torch.sin(2 * math.pi * f * times.unsqueeze(-1) + p)).sum(-1)


@dataclass
class SamplingTask:
    """One set of sequences: ``inputs`` ``(n, L, C)``, ``labels`` ``(n, L, 1)``, the true relative steps
    ``steps`` ``(n, L)`` (``tau_k``: the step into position ``k``, for models given the true steps),
    ``floor`` (the oracle's MSE) and ``hold`` (MSE of repeating the last observed value)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    steps: torch.Tensor
    floor: float
    hold: float

    def batch(self, idx: torch.Tensor | slice, with_steps: bool = False) -> dict[str, torch.Tensor]:
        out = {"input_values": self.inputs[idx], "labels": self.labels[idx]}
        if with_steps:
            out["timesteps"] = self.steps[idx]
        return out

    def __len__(self) -> int:
        return self.inputs.shape[0]


def sampling_steps(
    n: int,
    L: int,
    grid: str = "uniform",
    base_step: float = 0.02,
    scale: float = 1.0,
    jitter: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Steps ``Delta_k`` ``(n, L)`` of a grid: ``"uniform"`` (``base_step``), ``"scaled"``
    (``base_step * scale``) or ``"jitter"`` (``base_step * scale * U[1 - jitter, 1 + jitter]`` per step)."""
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
    return_bank: bool = False,
):
    """``(values (n, L, 1) float32, times (n, L) float64)`` on a grid of :func:`sampling_steps`
    (``times[:, 0] = 0``); with ``return_bank`` also the :class:`SignalBank`."""
    if n < 1 or L < 1:
        raise ValueError(f"n and L must be positive, got n={n}, L={L}")
    g = torch.Generator().manual_seed(seed)
    bank = SignalBank.sample(n, n_components, freq_range, amp_range, g)
    steps = sampling_steps(n, L, grid, base_step, scale, jitter, generator=g)
    times = torch.cumsum(steps, dim=1) - steps[:, :1]
    values = bank(times).unsqueeze(-1).float()
    return (values, times, bank) if return_bank else (values, times)


def regression_batch(
    values: torch.Tensor, times: torch.Tensor, base_step: float, with_timesteps: bool = False
) -> dict[str, torch.Tensor]:
    """One-step-ahead regression on a grid: inputs ``u_{<=k}``, target ``u_{k+1}``; ``timesteps`` (the
    relative steps ``(t_k - t_{k-1}) / base_step``, 1 for the first) only when ``with_timesteps``."""
    batch = {"input_values": values[:, :-1], "labels": values[:, 1:]}
    if with_timesteps:
        dt = torch.diff(times, dim=1, prepend=times[:, :1] - base_step)[:, :-1]
        batch["timesteps"] = (dt / base_step).float()
    return batch


def next_step_floor(
    bank: SignalBank, times: torch.Tensor, lo: float, hi: float, n_quad: int = 64
) -> torch.Tensor:
    """Squared error per position of the best prediction of ``u(t_k + Delta)`` when the signal is known
    but ``Delta ~ U[lo, hi]`` is not: the oracle predicts the mean ``E_Delta u(t_k + Delta)`` (midpoint
    rule, ``n_quad`` nodes) and errs by its deviation from the realised ``u(t_{k+1})``. ``times``:
    ``(n, L + 1)``; returns ``(n, L)``."""
    if hi <= lo:
        return torch.zeros(times.shape[0], times.shape[1] - 1, dtype=torch.float64)
    nodes = lo + (hi - lo) * (torch.arange(n_quad, dtype=torch.float64) + 0.5) / n_quad
    mean = bank(times[:, :-1, None] + nodes).mean(-1)  # (n, L)
    return (bank(times[:, 1:]) - mean) ** 2


def grid_task(
    n: int,
    L: int,
    grid: str,
    base_step: float,
    scale: float = 1.0,
    jitter: float = 0.5,
    seed: int = 0,
    n_components: int = 3,
    freq_range: tuple[float, float] = (0.5, 3.0),
    amp_range: tuple[float, float] = (0.5, 1.0),
) -> SamplingTask:
    """The earlier task on one grid: ``L + 1`` samples, inputs ``u_0..u_{L-1}``, targets ``u_1..u_L``."""
    values, times, bank = sample_signals(
        n, L + 1, grid, base_step, scale, jitter, seed, n_components, freq_range, amp_range, return_bank=True
    )
    batch = regression_batch(values, times, base_step, with_timesteps=True)
    if grid == "jitter":
        step = base_step * scale
        floor = next_step_floor(bank, times, step * (1 - jitter), step * (1 + jitter)).mean().item()
    else:  # the next sampling time is known on a deterministic grid
        floor = 0.0
    hold = torch.mean((values[:, 1:] - values[:, :-1]) ** 2).item()
    return SamplingTask(batch["input_values"], batch["labels"], batch["timesteps"], floor, hold)


def regime_steps(
    n: int, L: int, step_range: tuple[float, float], regimes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Relative steps ``(n, L)``, piecewise constant: ``regimes`` segments per sequence with change points
    drawn uniformly (distinct, inside the sequence), each segment's step ``~ U[step_range]``."""
    lo, hi = step_range
    values = lo + (hi - lo) * torch.rand(n, regimes, generator=generator, dtype=torch.float64)
    if regimes == 1:
        return values.expand(n, L).clone()
    cuts = torch.argsort(torch.rand(n, L - 1, generator=generator), dim=1)[:, : regimes - 1] + 1
    starts = torch.zeros(n, L, dtype=torch.long)
    starts.scatter_(1, cuts, 1)
    segment = torch.cumsum(starts, dim=1)  # (n, L): index of the regime at each position
    return torch.gather(values, 1, segment)


def observed_steps_task(
    n: int,
    L: int,
    step_range: tuple[float, float],
    base_step: float = 0.02,
    regimes: int = 2,
    horizon: float = 1.0,
    noise: float = 0.03,
    seed: int = 0,
    n_components: int = 3,
    freq_range: tuple[float, float] = (0.5, 3.0),
    amp_range: tuple[float, float] = (0.5, 1.0),
) -> SamplingTask:
    """Sequences with observed time stamps and rate changes (module docstring).

    ``inputs[..., 0]`` is the noisy value, ``inputs[..., 1]`` the relative step into the position
    (``tau_0`` is the first segment's step); ``labels`` the noisy value ``horizon * base_step`` later.
    ``floor`` is the MSE of the oracle that predicts the noise-free target (the target noise's mean
    square); ``hold`` repeats the last observed value.
    """
    if n < 1 or L < 1:
        raise ValueError(f"n and L must be positive, got n={n}, L={L}")
    g = torch.Generator().manual_seed(seed)
    bank = SignalBank.sample(n, n_components, freq_range, amp_range, g)
    tau = regime_steps(n, L, step_range, regimes, g)
    steps = tau * base_step
    times = torch.cumsum(steps, dim=1) - steps[:, :1]
    obs_noise = noise * torch.randn(n, L, generator=g, dtype=torch.float64)
    target_noise = noise * torch.randn(n, L, generator=g, dtype=torch.float64)
    values = bank(times) + obs_noise
    target = bank(times + horizon * base_step) + target_noise
    inputs = torch.stack([values, tau], dim=-1).float()
    labels = target.unsqueeze(-1).float()
    floor = torch.mean(target_noise.float() ** 2).item()
    hold = torch.mean((labels[..., 0] - inputs[..., 0]) ** 2).item()
    return SamplingTask(inputs, labels, tau.float(), floor, hold)
