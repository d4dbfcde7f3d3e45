"""Tests of papers_shared.attacks.losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from papers_shared.attacks import losses


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the thread
    hand-offs dominate (seconds instead of milliseconds); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(b: int = 5, c: int = 7, seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(b, c, generator=torch.Generator().manual_seed(seed))


def test_logit_loss_is_minus_mean_target_logit():
    z = _logits()
    t = torch.tensor([0, 3, 6, 2, 2])
    expected = -sum(float(z[i, t[i]]) for i in range(5)) / 5
    assert math.isclose(float(losses.logit_loss(z, t)), expected, rel_tol=1e-6)
    assert losses.logit_loss(z, t, reduction="none").shape == (5,)


def test_ce_matches_torch():
    z = _logits()
    y = torch.tensor([1, 2, 3, 4, 5])
    assert torch.allclose(losses.ce(z, y), F.cross_entropy(z, y))


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(a || b) of probability rows, by hand."""
    return (a * (a.log() - b.log())).sum(dim=1)


def test_symmetric_kl_properties_and_hand_formula():
    p_logits, q_logits = _logits(seed=1), _logits(seed=2)
    assert float(losses.symmetric_kl(p_logits, p_logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.symmetric_kl(p_logits, q_logits)) > 0
    p, q = p_logits.softmax(1), q_logits.softmax(1)
    w_qp, w_pq = 0.1, 1.0
    hand = (w_qp * _kl(q, p) + w_pq * _kl(p, q)).mean()
    got = losses.symmetric_kl(p_logits, q_logits, w_qp=w_qp, w_pq=w_pq)
    assert torch.allclose(got, hand, atol=1e-6)
    hand_mean = (w_qp * (q * (q.log() - p.log())) + w_pq * (p * (p.log() - q.log()))).mean()
    assert torch.allclose(
        losses.symmetric_kl(p_logits, q_logits, w_qp, w_pq, reduction="mean"), hand_mean, atol=1e-7
    )
    for seed in range(5):
        a, b = _logits(seed=10 + seed), _logits(seed=20 + seed)
        assert float(losses.symmetric_kl(a, b, 0.3, 0.7)) >= 0


def test_symmetric_kl_matches_kldivloss_convention():
    a, b = _logits(seed=3), _logits(seed=4)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    ref = 0.1 * kl(F.log_softmax(a, -1), F.softmax(b, -1)) + kl(F.log_softmax(b, -1), F.softmax(a, -1))
    # KLDivLoss(log p, q) = KL(q || p): first term KL(q||p) weighted 0.1, second KL(p||q)
    assert torch.allclose(losses.symmetric_kl(a, b, w_qp=0.1, w_pq=1.0), ref, atol=1e-6)


def test_symmetric_kl_shape_mismatch():
    with pytest.raises(ValueError):
        losses.symmetric_kl(_logits(c=3), _logits(c=4))


def test_smooth_l1_match_hand_formula_and_mask():
    z = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    a = torch.tensor([[0.5, 0.0], [1.0, 1.0]])
    # row 0: 0.5 * 0.5^2 + (3 - 0.5) = 0.125 + 2.5 ; row 1: 0
    assert math.isclose(float(losses.smooth_l1_match(z, a)), (0.125 + 2.5) / 2, rel_tol=1e-6)
    assert float(losses.smooth_l1_match(z, z)) == 0
    mask = torch.tensor([0.0, 1.0])
    assert float(losses.smooth_l1_match(z, a, mask=mask)) == 0
    row = torch.tensor([0.5, 0.0])
    assert torch.allclose(losses.smooth_l1_match(z, row), losses.smooth_l1_match(z, row.expand(2, 2)))


def test_po_trip_decreases_towards_target_and_triplet_sign():
    t = torch.tensor([2])
    y = torch.tensor([0])
    far = torch.tensor([[5.0, 1.0, 0.0, 0.5]])
    near = torch.tensor([[0.5, 1.0, 5.0, 0.5]])
    assert float(losses.po_trip(near, t)) < float(losses.po_trip(far, t))
    assert torch.isfinite(losses.po_trip(far, t, y))
    # paper triplet: cos(z, y) - cos(z, t) + margin > 0 when z points to y, so the loss grows
    assert float(losses.po_trip(far, t, y)) > float(losses.po_trip(far, t))
    # and it vanishes (clamped at 0) when z points to the target
    assert math.isclose(float(losses.po_trip(near, t, y)), float(losses.po_trip(near, t)), rel_tol=1e-6)
    # the Zhao-code sign is the opposite
    assert float(losses.po_trip(near, t, y, triplet="zhao_code")) > float(losses.po_trip(near, t))
    with pytest.raises(ValueError):
        losses.po_trip(far, t, y, triplet="other")


def test_po_trip_gradient_raises_target_logit():
    z = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    losses.po_trip(z, torch.tensor([2])).backward()
    assert z.grad[0, 2] < 0  # descending the loss increases the target logit


def test_get_loss_and_bad_shapes():
    assert losses.get_loss("logit") is losses.logit_loss
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("hinge")
    with pytest.raises(ValueError):
        losses.logit_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        losses.ce(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
