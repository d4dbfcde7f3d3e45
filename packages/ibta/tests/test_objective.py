"""Spec §3.3 / §8 item 3: the divergence and the IB objective against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from ibta import ib_divergence, ib_objective, ib_terms, noisy_companion


def _kl(p, q):  # KL(p || q) per row, by hand
    return (p * (p.log() - q.log())).sum(dim=1)


def test_divergence_matches_hand_formula():
    g = torch.Generator().manual_seed(0)
    z, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    p, pt = z.softmax(1), zt.softmax(1)
    for gk in (0.0, 0.1, 1.0):
        want = (gk * _kl(pt, p) + _kl(p, pt)).mean()
        assert torch.allclose(ib_divergence(z, zt, gk), want, atol=1e-6)


def test_divergence_equals_pytorch_kldiv_batchmean_form():
    # the official code's double_kl_div(z, z~, gamma) with nn.KLDivLoss(reduction="batchmean")
    g = torch.Generator().manual_seed(1)
    z, zt = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    code = 0.1 * kl(F.log_softmax(z, -1), F.softmax(zt, -1)) + kl(F.log_softmax(zt, -1), F.softmax(z, -1))
    assert torch.allclose(ib_divergence(z, zt, 0.1), code, atol=1e-6)


def test_divergence_nonnegative_and_zero_on_identical_logits():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        z, zt = torch.randn(4, 6, generator=g) * 3, torch.randn(4, 6, generator=g) * 3
        assert float(ib_divergence(z, zt, 0.3)) >= 0
    z = torch.randn(4, 6, generator=g)
    assert float(ib_divergence(z, z.clone(), 0.3)) == pytest.approx(0.0, abs=1e-7)
    # shift invariance of softmax: same distributions, zero divergence
    assert float(ib_divergence(z, z + 5.0, 0.3)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("base_loss", ["ce", "logit"])
def test_objective_matches_hand_formula(targeted, base_loss):
    g = torch.Generator().manual_seed(3)
    z, zt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    c = torch.randint(0, 5, (6,), generator=g)
    gamma, lam = 0.3, 0.7
    if base_loss == "ce":
        loss = -(z.log_softmax(1).gather(1, c[:, None])).mean()
        noisy = -(zt.log_softmax(1).gather(1, c[:, None])).mean()
    else:
        loss = -z.gather(1, c[:, None]).mean()
        noisy = -zt.gather(1, c[:, None]).mean()
    p, pt = z.softmax(1), zt.softmax(1)
    div = (gamma * _kl(pt, p) + _kl(p, pt)).mean()
    want = -(loss + gamma * noisy + lam * div) if targeted else loss + gamma * noisy - lam * div
    got = ib_objective(z, zt, c, targeted, gamma=gamma, lam=lam, base_loss=base_loss)
    assert torch.allclose(got, want, atol=1e-5)
    terms = ib_terms(z, zt, c, targeted, gamma=gamma, lam=lam, base_loss=base_loss)
    assert torch.allclose(terms["divergence"], div, atol=1e-6)
    assert torch.allclose(terms["noisy_loss"], noisy, atol=1e-6)


def test_gamma_kl_separate_from_gamma():
    g = torch.Generator().manual_seed(4)
    z, zt = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    c = torch.tensor([0, 2])
    a = ib_terms(z, zt, c, False, gamma=0.5, lam=1.0, gamma_kl=0.0)
    p, pt = z.softmax(1), zt.softmax(1)
    assert torch.allclose(a["divergence"], _kl(p, pt).mean(), atol=1e-6)
    b = ib_terms(z, zt, c, False, gamma=0.5, lam=1.0)  # gamma_kl defaults to gamma
    assert torch.allclose(b["divergence"], (0.5 * _kl(pt, p) + _kl(p, pt)).mean(), atol=1e-6)


def test_divergence_is_minimised_in_both_modes():
    # d objective / d z~ pulls z~ towards z in both modes (the -lam*D term)
    z = torch.tensor([[2.0, 0.0, -1.0]])
    zt = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    c = torch.tensor([1])
    for targeted in (True, False):
        obj = ib_objective(z, zt, c, targeted, gamma=0.0, lam=1.0)
        (gz,) = torch.autograd.grad(obj, zt)
        zt2 = (zt + 0.01 * gz).detach()
        assert float(ib_divergence(z, zt2, 0.0)) < float(ib_divergence(z, zt.detach(), 0.0))


def test_bad_inputs_raise_clear_errors():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="same shape"):
        ib_divergence(z, torch.randn(3, 5))
    with pytest.raises(ValueError, match="shape"):
        ib_divergence(torch.randn(12), torch.randn(12))
    with pytest.raises(ValueError, match="NaN"):
        ib_divergence(z, torch.full((3, 4), math.nan))
    with pytest.raises(ValueError, match="labels"):
        ib_objective(z, z, torch.tensor([0, 1]), True)
    with pytest.raises(ValueError, match="lam"):
        ib_objective(z, z, torch.tensor([0, 1, 2]), True, lam=-1.0)
    with pytest.raises(ValueError, match="base_loss"):
        ib_objective(z, z, torch.tensor([0, 1, 2]), True, base_loss="hinge")


def test_noisy_companion_in_box_and_seeded():
    x = torch.rand(2, 3, 8, 8)
    a = noisy_companion(x, 0.1, torch.Generator().manual_seed(5))
    b = noisy_companion(x, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, (x + 0.1 * xi).clamp(0, 1))
    assert torch.equal(noisy_companion(x, 0.0), x)
    with pytest.raises(ValueError, match="sigma"):
        noisy_companion(x, -0.1)
