"""MINE: Mutual Information Neural Estimation (Belghazi et al., ICML 2018, arXiv 1801.04062, Algorithm 1 and Section 3.2).

Donsker-Varadhan lower bound with a statistics network ``T_theta``::

    I(A; B) >= I_hat = E_{P_AB}[T(a, b)] - log E_{P_A x P_B}[exp T(a, b')]

Samples of the product of marginals pair each ``a`` with a ``b'`` shuffled within the batch. The bound
is ascended with the bias-corrected gradient of MINE: in ``grad log E[e^T] = grad E[e^T] / E[e^T]`` the
denominator is replaced by an exponential moving average of the mini-batch ``E[e^T]`` (rate 0.01), i.e.
the surrogate loss ``-(mean T_joint - mean exp(T_marg) / ema)`` with ``ema`` treated as a constant.

:func:`estimate_mutual_information` trains on a training split and reports the mean of the last
``average_last`` evaluations of the bound on held-out pairs (ours).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["MINE", "MIEstimate", "StatisticsNetwork", "estimate_mutual_information", "gaussian_mi"]


def _check_pairs(a: Tensor, b: Tensor) -> None:
    for nm, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{nm} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{nm} must have shape (N, dim), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{nm} must be a floating tensor, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{nm} contains NaN or inf values")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < 2:
        raise ValueError("MINE needs at least 2 samples (the marginal samples shuffle the batch)")


class StatisticsNetwork(nn.Module):
    """``T_theta(a, b)``: MLP on the concatenation ``[a; b]`` with ``depth`` hidden ELU layers (ours)."""

    def __init__(self, dim_a: int, dim_b: int, hidden: int = 512, depth: int = 2) -> None:
        super().__init__()
        if min(dim_a, dim_b, hidden) < 1 or depth < 0:
            raise ValueError("dim_a, dim_b, hidden must be positive and depth >= 0")
        self.dim_a, self.dim_b = int(dim_a), int(dim_b)
        layers: list[nn.Module] = []
        d = self.dim_a + self.dim_b
        for _ in range(int(depth)):
            layers += [nn.Linear(d, hidden), nn.ELU()]
            d = hidden
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != self.dim_a or b.shape[1] != self.dim_b:
            raise ValueError(
                f"expected a (N, {self.dim_a}) and b (N, {self.dim_b}), got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        return self.net(torch.cat([a, b], dim=1)).squeeze(1)


StatFn = Callable[[Tensor, Tensor], Tensor]


class MINE(nn.Module):
    """Donsker-Varadhan bound of a statistics network, with MINE's EMA bias-corrected gradient.

    Args:
        stat_net: ``T(a, b) -> (N,)`` (a :class:`StatisticsNetwork` or any module/callable).
        ema_rate: rate of the moving average of ``E[exp T]`` on marginal samples (0.01).
    """

    def __init__(self, stat_net: nn.Module | StatFn, ema_rate: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate!r}")
        self.stat_net = stat_net
        self.ema_rate = float(ema_rate)
        self.ema: float | None = None

    def _scores(
        self, a: Tensor, b: Tensor, perm: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        _check_pairs(a, b)
        n = a.shape[0]
        if perm is None:
            dev = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(n, generator=generator, device=dev).to(b.device)
        elif perm.shape != (n,):
            raise ValueError(f"perm must have shape ({n},), got {tuple(perm.shape)}")
        t_joint = self.stat_net(a, b)
        t_marg = self.stat_net(a, b[perm])
        if t_joint.shape != (n,) or t_marg.shape != (n,):
            raise ValueError(f"the statistics network must return shape ({n},), got {tuple(t_joint.shape)}")
        return t_joint, t_marg

    def lower_bound(
        self, a: Tensor, b: Tensor, perm: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``mean T(a_i, b_i) - log mean_i exp T(a_i, b_perm(i))`` (the DV bound, in nats).

        ``perm`` fixes the shuffle that builds the product-of-marginals samples (default: random).
        """
        t_joint, t_marg = self._scores(a, b, perm, generator)
        return t_joint.mean() - (torch.logsumexp(t_marg, dim=0) - math.log(t_marg.shape[0]))

    def step(
        self,
        a: Tensor,
        b: Tensor,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator | None = None,
    ) -> float:
        """One ascent step with the bias-corrected gradient; returns the mini-batch bound (before the step)."""
        t_joint, t_marg = self._scores(a, b, None, generator)
        log_mean_exp = torch.logsumexp(t_marg, dim=0) - math.log(t_marg.shape[0])
        mean_exp = log_mean_exp.exp()
        batch = float(mean_exp.detach())
        self.ema = batch if self.ema is None else (1.0 - self.ema_rate) * self.ema + self.ema_rate * batch
        surrogate = -(t_joint.mean() - mean_exp / max(self.ema, 1e-30))
        optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        optimizer.step()
        return float((t_joint.mean() - log_mean_exp).detach())


@dataclass
class MIEstimate:
    """A MINE estimate: ``value`` (nats, mean of the last held-out evaluations) and the full ``history``."""

    value: float
    history: list[float] = field(default_factory=list)
    train_history: list[float] = field(default_factory=list)


def estimate_mutual_information(
    a: Tensor,
    b: Tensor,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-4,
    seed: int = 0,
    *,
    hidden: int = 512,
    depth: int = 2,
    ema_rate: float = 0.01,
    holdout_frac: float = 0.2,
    eval_every: int = 5,
    average_last: int = 100,
    standardize: bool = True,
) -> MIEstimate:
    """Estimate ``I(A; B)`` in nats from paired rows ``a[i], b[i]`` with MINE.

    A seeded random ``holdout_frac`` of the pairs is held out; the statistics network (MLP ``hidden`` x
    ``depth``, ELU) is trained with Adam (``lr``) on mini-batches of the rest; every ``eval_every``
    steps the DV bound is evaluated on the held-out pairs (one fixed shuffle), and ``value`` is the mean
    of the last ``average_last`` evaluations. ``standardize`` z-scores every column with training-split
    statistics (MI is invariant to it; it helps optimisation) [ours].
    """
    _check_pairs(a, b)
    if int(steps) < 1 or int(batch_size) < 2 or int(eval_every) < 1 or int(average_last) < 1:
        raise ValueError("steps, eval_every and average_last must be >= 1, batch_size >= 2")
    if not 0.0 < holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac!r}")
    n = a.shape[0]
    n_hold = max(2, int(round(holdout_frac * n)))
    if n - n_hold < 2:
        raise ValueError(f"need more samples for a train/held-out split, got {n}")
    a = a.detach().float().cpu()
    b = b.detach().float().cpu()
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=gen)
    tr, ho = order[n_hold:], order[:n_hold]
    if standardize:
        ma, sa = a[tr].mean(0), a[tr].std(0).clamp_min(1e-8)
        mb, sb = b[tr].mean(0), b[tr].std(0).clamp_min(1e-8)
        a, b = (a - ma) / sa, (b - mb) / sb
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = StatisticsNetwork(a.shape[1], b.shape[1], hidden, depth)
    mine = MINE(net, ema_rate)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    a_tr, b_tr, a_ho, b_ho = a[tr], b[tr], a[ho], b[ho]
    hold_perm = torch.randperm(n_hold, generator=gen)
    bs = min(int(batch_size), a_tr.shape[0])
    history: list[float] = []
    train_history: list[float] = []
    for s in range(int(steps)):
        idx = torch.randint(0, a_tr.shape[0], (bs,), generator=gen)
        train_history.append(mine.step(a_tr[idx], b_tr[idx], opt, generator=gen))
        if (s + 1) % int(eval_every) == 0 or s == int(steps) - 1:
            with torch.no_grad():
                history.append(float(mine.lower_bound(a_ho, b_ho, perm=hold_perm)))
    tail = history[-int(average_last) :]
    return MIEstimate(value=float(sum(tail) / len(tail)), history=history, train_history=train_history)


def gaussian_mi(rho: float, d: int = 1) -> float:
    """True MI (nats) of ``d`` independent pairs of unit Gaussians with correlation ``rho``:
    ``-(d/2) log(1 - rho^2)``."""
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must be in (-1, 1), got {rho!r}")
    return -0.5 * d * math.log(1.0 - rho * rho)
