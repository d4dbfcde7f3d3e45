import pytest
import torch

from sr_cis.ca_oad import (
    OnlineConfidenceAnomalyDetector,
    batch_quantile_flags,
    batch_zscore_flags,
    confidence_score,
)


def test_low_outlier_is_flagged():
    g = torch.Generator().manual_seed(0)
    stream = torch.cat([0.9 + 0.01 * torch.randn(50, generator=g), torch.tensor([0.1])])
    det = OnlineConfidenceAnomalyDetector(warmup=32)
    flags = torch.cat([det.update_and_flag(stream[i : i + 1]) for i in range(51)])
    assert flags[-1]
    z = (0.1 - stream[:50].mean()) / stream[:50].std()
    assert z < -50  # z is about -80


def test_constant_stream_flags_nothing():
    det = OnlineConfidenceAnomalyDetector(warmup=4)
    assert not det.update_and_flag(torch.full((100,), 0.7)).any()


def test_iid_normal_flags_twenty_percent():
    g = torch.Generator().manual_seed(1)
    det = OnlineConfidenceAnomalyDetector(warmup=32)
    flags = torch.cat([det.update_and_flag(torch.randn(50, generator=g)) for _ in range(200)])
    assert abs(flags[32:].float().mean().item() - 0.2) < 0.02


def test_welford_matches_torch():
    x = torch.rand(37, dtype=torch.float64)
    det = OnlineConfidenceAnomalyDetector()
    det.update_and_flag(x)
    assert det.n == 37
    assert abs(det.mean - x.mean().item()) < 1e-12
    assert abs(det.std - x.std().item()) < 1e-12


def test_batch_scope_is_the_icl_rule():
    g = torch.Generator().manual_seed(2)
    det = OnlineConfidenceAnomalyDetector(scope="batch")
    for _ in range(5):
        c = torch.rand(16, generator=g)
        ref = (c - c.mean()) / c.std() < -0.842
        assert torch.equal(det.update_and_flag(c), ref)
    # warm-up uses the batch rule too
    det2 = OnlineConfidenceAnomalyDetector(warmup=1000)
    c = torch.rand(16, generator=g)
    assert torch.equal(det2.update_and_flag(c), batch_zscore_flags(c, 0.842))


def test_scores_and_errors():
    z = torch.tensor([[2.0, 0.0, 0.0]])
    p = z.softmax(1)
    assert torch.allclose(confidence_score(z, "max_prob"), p.max(1).values)
    assert torch.allclose(confidence_score(z, "max_logit"), torch.tensor([2.0]))
    assert torch.allclose(confidence_score(z, "margin"), p[:, 0] - p[:, 1])
    with pytest.raises(ValueError, match="score"):
        confidence_score(z, "entropy")
    det = OnlineConfidenceAnomalyDetector()
    with pytest.raises(ValueError, match="NaN"):
        det.update_and_flag(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        det.update_and_flag(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="scope"):
        OnlineConfidenceAnomalyDetector(scope="window")


def test_quantile_rule_routes_the_configured_share_whatever_the_distribution():
    # max-prob-like scores piled up near 1: the z-score rule routes few, the quantile rule ~20 %
    g = torch.Generator().manual_seed(3)
    stream = 1 - torch.rand(2000, generator=g) ** 40 * 0.5  # piled up near 1, a long low tail
    zs = OnlineConfidenceAnomalyDetector(warmup=32, rule="zscore")
    q = OnlineConfidenceAnomalyDetector(warmup=32, rule="quantile", route_share=0.2)
    fz = torch.cat([zs.update_and_flag(stream[i : i + 50]) for i in range(0, 2000, 50)])
    fq = torch.cat([q.update_and_flag(stream[i : i + 50]) for i in range(0, 2000, 50)])
    assert fz[32:].float().mean() < 0.08
    assert abs(fq[32:].float().mean().item() - 0.2) < 0.03


def test_quantile_rule_hand_computed():
    det = OnlineConfidenceAnomalyDetector(warmup=0, rule="quantile", route_share=0.25)
    # stream 4, 3, 2, 1, 0.5: the k-th smallest past value with k = floor(0.25 n) is the threshold
    flags = det.update_and_flag(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 2.5]))
    # n=0,1: no flag; n=2 past [3,4] thr 3 -> 2 < 3 flag; n=3 past [2,3,4] thr 2 -> 1 flag;
    # n=4 past [1,2,3,4] thr 2 (index 1) -> 0.5 flag; n=5 past [0.5,1,2,3,4] thr 1 -> 2.5 no
    assert flags.tolist() == [False, False, True, True, True, False]
    assert det.sorted == [0.5, 1.0, 2.0, 2.5, 3.0, 4.0]
    assert batch_quantile_flags(torch.tensor([5.0, 1.0, 3.0, 2.0]), 0.5).tolist() == [
        False,
        True,
        False,
        True,
    ]
    state = det.state_dict()
    other = OnlineConfidenceAnomalyDetector(warmup=0, rule="quantile", route_share=0.25)
    other.load_state_dict(state)
    assert (
        other.update_and_flag(torch.tensor([0.7])).tolist()
        == det.update_and_flag(torch.tensor([0.7])).tolist()
    )


def test_distance_margin_and_energy_scores():
    z = torch.tensor([[-1.0, -4.0, -9.0]])
    assert torch.allclose(confidence_score(z, "distance_margin"), torch.tensor([3.0]))
    assert torch.allclose(confidence_score(z, "energy"), torch.logsumexp(z, 1))
    with pytest.raises(ValueError, match="rule"):
        OnlineConfidenceAnomalyDetector(rule="median")
    with pytest.raises(ValueError, match="route_share"):
        OnlineConfidenceAnomalyDetector(route_share=1.0)
