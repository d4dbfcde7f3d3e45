import math

import pytest
import torch
import torch.nn.functional as F

from icl_vmf.buffer import ClassBalancedReservoir
from icl_vmf.losses import cl_vmf_loss, vmf_margin_regularizer, vmf_set2set_loss
from icl_vmf.odi import VMFOutlierDetector


def _rand_S(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=g) * 2 - 1


@pytest.mark.parametrize("kappa", [0.5, 1.0, 2.0])
def test_vmf_loss_distinct_labels_equals_cross_entropy(kappa):
    S = _rand_S(6)
    y = torch.arange(6)
    expected = F.cross_entropy(S / kappa, torch.arange(6))
    torch.testing.assert_close(vmf_set2set_loss(S, y, kappa, gamma=0.0), expected, atol=1e-5, rtol=1e-5)


def _loop_vmf(S, y, kappa, gamma):
    n = len(S)
    total = 0.0
    for i in range(n):
        pos = math.exp(S[i][i] / kappa)
        neg = sum(math.exp(S[i][j] / kappa) for j in range(n) if y[j] != y[i])
        total += -math.log(pos / (pos + neg + gamma))
    return total / n


def test_vmf_loss_duplicates_counted_per_occurrence():
    S = _rand_S(7, seed=1)
    y = torch.tensor([0, 1, 0, 2, 2, 2, 1])
    for kappa, gamma in [(1.0, 1e-6), (0.5, 0.3)]:
        got = vmf_set2set_loss(S, y, kappa, gamma)
        assert got.item() == pytest.approx(_loop_vmf(S.tolist(), y.tolist(), kappa, gamma), rel=1e-5)
    # a class present three times contributes three denominator terms: dropping one changes the loss
    S2 = S.clone()
    S2[0, 3] += 0.5
    assert vmf_set2set_loss(S2, y) > vmf_set2set_loss(S, y)
    # same-label off-diagonal entries are ignored
    S3 = S.clone()
    S3[0, 2] = 5.0
    torch.testing.assert_close(vmf_set2set_loss(S3, y), vmf_set2set_loss(S, y))


def test_margin_regularizer_zero_inside_margins_and_hand_formula():
    y = torch.tensor([0, 0, 1])
    delta = 0.01
    S = torch.tensor([[1.0, 0.995, -0.999], [0.992, 0.999, -1.0], [-0.995, -0.991, 1.0]])
    assert vmf_margin_regularizer(S, y, delta).item() == 0.0
    S = _rand_S(3, seed=2)
    n = 3
    exp = 0.0
    for i in range(n):
        for j in range(n):
            s = S[i, j].item()
            exp += max(abs(s - 1) - delta, 0) if y[i] == y[j] else max(abs(s + 1) - delta, 0)
    assert vmf_margin_regularizer(S, y, delta).item() == pytest.approx(exp / n, rel=1e-6)
    total = cl_vmf_loss(S, y, kappa=1.0, lam=0.1, delta=delta, gamma=1e-6)
    assert total.item() == pytest.approx(vmf_set2set_loss(S, y).item() + 0.1 * exp / n, rel=1e-6)


def test_losses_bad_input():
    with pytest.raises(ValueError, match="one label per column"):
        vmf_set2set_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs `rows`"):
        vmf_set2set_loss(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="one column index per row"):
        vmf_set2set_loss(torch.zeros(2, 3), torch.tensor([0, 1, 2]), rows=torch.tensor([0]))
    with pytest.raises(ValueError, match="one label per column"):
        vmf_set2set_loss(torch.zeros(2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        vmf_margin_regularizer(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="kappa"):
        vmf_set2set_loss(torch.zeros(2, 2), torch.tensor([0, 1]), kappa=0.0)


@pytest.mark.parametrize("world", [2, 3])
def test_row_shares_of_a_split_batch_sum_to_the_full_loss_and_gradient(world):
    """Several processes each score rows rank::world against every column (icl_vmf.trainer)."""
    y = torch.tensor([0, 1, 0, 2, 2, 1, 3, 0])
    S = _rand_S(8, seed=4).requires_grad_(True)
    full = cl_vmf_loss(S, y, kappa=0.5, lam=0.1, delta=0.01, gamma=1e-6)
    (g_full,) = torch.autograd.grad(full, S)
    shares = []
    for r in range(world):
        rows = torch.arange(r, 8, world)
        shares.append(cl_vmf_loss(S[rows], y, kappa=0.5, lam=0.1, delta=0.01, gamma=1e-6, rows=rows))
    total = sum(shares)
    (g_split,) = torch.autograd.grad(total, S)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_split, g_full)


def test_odi_flags_only_the_outlier_and_degenerate_batches():
    det = VMFOutlierDetector()
    assert det(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])).tolist() == [False] * 4 + [True]
    assert not det(torch.full((6,), 0.3)).any()
    assert det(torch.tensor([0.1])).tolist() == [False]
    g = torch.Generator().manual_seed(0)
    frac = det(torch.randn(10_000, generator=g)).float().mean().item()
    assert abs(frac - 0.20) < 0.02
    with pytest.raises(ValueError, match="NaN"):
        det(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        det(torch.zeros(2, 2))


def test_odi_running_scope_and_random_mode():
    run = VMFOutlierDetector(scope="running")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4000, generator=g)
    for chunk in scores.split(32):
        run(chunk)
    assert run.n == 4000
    assert run.mean == pytest.approx(scores.double().mean().item(), abs=1e-9)
    assert (run.m2 / (run.n - 1)) ** 0.5 == pytest.approx(scores.double().std().item(), abs=1e-9)
    # a batch of one is judged against the stream, unlike the batch rule
    assert run(torch.tensor([-5.0])).tolist() == [True]
    rnd = VMFOutlierDetector(mode="random", random_fraction=0.2, seed=1)
    frac = torch.cat([rnd(torch.zeros(100)) for _ in range(50)]).float().mean().item()
    assert abs(frac - 0.2) < 0.03


def test_reservoir_per_class_cap_and_uniform_inclusion():
    buf = ClassBalancedReservoir(capacity=30, num_classes=3, seed=0)
    assert buf.per_class == 10
    for s in range(20):
        buf.add(torch.full((9, 1), float(s)), torch.tensor([0, 1, 2] * 3))
        assert int(buf.per_class_counts().max()) <= 10
    # long stream of one class: every stored item comes from the stream, inclusion ~ uniform
    hits = torch.zeros(200)
    for rep in range(300):
        b = ClassBalancedReservoir(capacity=20, num_classes=2, seed=rep)
        stream = torch.arange(200, dtype=torch.float32).view(-1, 1)
        for s in range(0, 200, 10):
            b.add(stream[s : s + 10], torch.zeros(10, dtype=torch.long))
        assert b.per_class_counts().tolist() == [10, 0]
        vals = b.images[b.filled].flatten().long()
        assert len(set(vals.tolist())) == 10
        hits[vals] += 1
    p = hits / 300
    assert abs(p.mean().item() - 10 / 200) < 1e-6
    assert abs(p[:100].mean().item() - p[100:].mean().item()) < 0.015  # early and late equally likely


def test_reservoir_sampling_filled_vs_legacy_and_state_round_trip():
    buf = ClassBalancedReservoir(capacity=8, num_classes=4, seed=0)  # 2 slots per class
    buf.add(torch.ones(1, 3), torch.tensor([3]))  # only slot 6 filled
    x, y = buf.sample(5)
    assert y.tolist() == [3] and torch.equal(x, torch.ones(1, 3))
    legacy = ClassBalancedReservoir(capacity=8, num_classes=4, seed=0, legacy_sampling=True)
    legacy.add(torch.ones(1, 3), torch.tensor([3]))
    x, y = legacy.sample(5)
    assert y.tolist() == [0] and torch.equal(x, torch.zeros(1, 3))  # the code draws empty slot 0
    buf.add(torch.rand(4, 3), torch.tensor([0, 1, 2, 2]), logits=None)
    state = buf.state_dict()
    other = ClassBalancedReservoir(capacity=8, num_classes=4, seed=99)
    other.load_state_dict(state)
    assert torch.equal(other.sample(3)[0], buf.sample(3)[0])
    xf = buf.sample(2, transform=lambda t: t * 0)[0]
    assert torch.equal(xf, torch.zeros_like(xf))


def test_reservoir_uint8_storage_is_lossless_for_totensor_images():
    x = torch.randint(0, 256, (4, 3, 5, 5)).float() / 255
    buf = ClassBalancedReservoir(capacity=4, num_classes=1, dtype=torch.uint8)
    buf.add(x, torch.zeros(4, dtype=torch.long))
    out, _ = buf.sample(4)
    assert buf.images.dtype == torch.uint8
    assert sorted(out.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum(dim=(1, 2, 3)).tolist()))


def test_reservoir_screening_admission():
    buf = ClassBalancedReservoir(capacity=4, num_classes=2, seed=0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1)
    n = buf.add(x, torch.zeros(4, dtype=torch.long), scores=torch.tensor([5.0, 6.0, 4.0, 4.0]))
    assert n == 2  # 5.0 (first) and 4.0 (new minimum); 6.0 and the tie 4.0 rejected
    assert int(buf.seen[0]) == 2
    buf.reset_screening()
    assert (
        buf.add(x[:1], torch.zeros(1, dtype=torch.long), scores=torch.tensor([9.0])) == 1
    )  # r ~ U{0..1} < 2
    assert int(buf.seen[0]) == 3


def test_reservoir_bad_input():
    with pytest.raises(ValueError, match="slot per class"):
        ClassBalancedReservoir(capacity=5, num_classes=10)
    buf = ClassBalancedReservoir(capacity=10, num_classes=2)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2)
    with pytest.raises(ValueError, match="labels"):
        buf.add(torch.zeros(1, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match="NaN"):
        buf.add(torch.full((1, 3), float("nan")), torch.tensor([0]))
    buf.add(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        buf.add(torch.zeros(1, 4), torch.tensor([0]))
    assert ClassBalancedReservoir(capacity=0, num_classes=3).add(torch.zeros(1, 3), torch.tensor([0])) == 0
