"""Spec §3.6 / §8 item 9: MINE against closed-form values."""

import math

import pytest
import torch

from ibta import MINE, StatisticsNetwork, estimate_mutual_information, gaussian_mi


def _gaussian_pairs(n, d, rho, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    b = rho * a + math.sqrt(1 - rho * rho) * torch.randn(n, d, generator=g)
    return a, b


def test_gaussian_mi_closed_form():
    assert gaussian_mi(0.8, 2) == pytest.approx(1.0216512, abs=1e-6)
    assert gaussian_mi(0.0) == 0.0


def test_bound_formula_on_fixed_tensors():
    a = torch.tensor([[1.0], [2.0], [-1.0]])
    b = torch.tensor([[0.5], [1.0], [3.0]])
    perm = torch.tensor([2, 0, 1])
    mine = MINE(lambda u, v: (u * v).sum(1))
    t_joint = torch.tensor([0.5, 2.0, -3.0])
    t_marg = torch.tensor([3.0, 1.0, -1.0])  # a_i * b_perm(i)
    want = t_joint.mean() - torch.log(torch.exp(t_marg).mean())
    assert float(mine.lower_bound(a, b, perm=perm)) == pytest.approx(float(want), abs=1e-6)


def test_bound_with_the_optimal_critic_recovers_the_true_mi():
    # T*(a, b) = log p(a, b) / (p(a) p(b)) makes the DV bound tight: I_hat -> I on large samples
    rho, d = 0.8, 2
    a, b = _gaussian_pairs(40000, d, rho, seed=0)
    s = 1 - rho * rho

    def log_ratio(u, v):
        return (
            -0.5 * d * math.log(s)
            - (u * u + v * v - 2 * rho * u * v).sum(1) / (2 * s)
            + (u * u + v * v).sum(1) / 2
        )

    est = MINE(log_ratio).lower_bound(a, b, generator=torch.Generator().manual_seed(1))
    assert float(est) == pytest.approx(gaussian_mi(rho, d), abs=0.06)
    # a constant critic gives exactly 0 (the bound is never positive without dependence)
    assert float(MINE(lambda u, v: torch.full((u.shape[0],), 3.0)).lower_bound(a, b)) == pytest.approx(
        0.0, abs=1e-5
    )


def test_ema_bias_correction_and_step_improves_bound():
    a, b = _gaussian_pairs(512, 1, 0.9, seed=2)
    torch.manual_seed(0)
    net = StatisticsNetwork(1, 1, hidden=32)
    mine = MINE(net, ema_rate=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    mine.step(a, b, opt, generator=g)
    first = mine.ema
    assert first is not None and first > 0
    vals = [mine.step(a, b, opt, generator=g) for _ in range(60)]
    assert mine.ema != first
    assert sum(vals[-10:]) / 10 > vals[0] + 0.2


def test_statistics_network_shapes_and_errors():
    net = StatisticsNetwork(3, 5, hidden=8, depth=2)
    assert net(torch.randn(4, 3), torch.randn(4, 5)).shape == (4,)
    assert sum(isinstance(m, torch.nn.ELU) for m in net.modules()) == 2
    with pytest.raises(ValueError, match="expected"):
        net(torch.randn(4, 2), torch.randn(4, 5))
    mine = MINE(net)
    with pytest.raises(ValueError, match="same number of rows"):
        mine.lower_bound(torch.randn(4, 3), torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        mine.lower_bound(torch.full((4, 3), float("nan")), torch.randn(4, 5))
    with pytest.raises(ValueError, match="ema_rate"):
        MINE(net, ema_rate=0.0)
    with pytest.raises(ValueError, match="holdout_frac"):
        estimate_mutual_information(torch.randn(10, 1), torch.randn(10, 1), steps=1, holdout_frac=1.5)


@pytest.mark.slow
def test_mine_estimates_correlated_gaussians_within_15_percent():
    # d = 2 pairs with rho = 0.8, 5 000 samples, true MI = -(d/2) log(1 - rho^2) = 1.02 nats
    a, b = _gaussian_pairs(5000, 2, 0.8, seed=0)
    est = estimate_mutual_information(a, b, steps=1500, lr=2e-3, hidden=64, seed=0)
    truth = gaussian_mi(0.8, 2)
    assert abs(est.value - truth) / truth < 0.15
    assert len(est.history) == 300 and len(est.train_history) == 1500


@pytest.mark.slow
def test_mine_on_independent_variables_is_near_zero():
    a, b = _gaussian_pairs(5000, 2, 0.0, seed=1)
    est = estimate_mutual_information(a, b, steps=1000, lr=2e-3, hidden=64, seed=0)
    assert est.value < 0.05
