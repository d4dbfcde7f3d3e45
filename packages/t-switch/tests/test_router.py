import pytest
import torch

from t_switch import KNNRouter, collect_query_features


def _clusters(n_per=20, K=3, D=5, sep=20.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, D, generator=g) * sep
    x = torch.cat([centers[k] + torch.randn(n_per, D, generator=g) for k in range(K)])
    y = torch.arange(K).repeat_interleave(n_per)
    return x, y, centers


def test_proba_is_neighbour_share():
    feats = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    r = KNNRouter(k=3).fit(feats, [0, 0, 1, 1, 1])
    p = r.predict_proba(torch.tensor([[0.4], [10.5]]))
    assert torch.allclose(p, torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0]]))
    assert torch.allclose(p.sum(1), torch.ones(2))


def test_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g)
    y = torch.randint(0, 4, (200,), generator=g)
    q = torch.randn(50, 8, generator=g)
    a = KNNRouter(k=7).fit(x, y).predict_proba(q)
    b = KNNRouter(k=7, backend="sklearn").fit(x, y).predict_proba(q)
    assert torch.allclose(a, b)


def test_separated_clusters_route_perfectly_and_modes():
    x, y, centers = _clusters()
    r = KNNRouter(k=5).fit(x, y)
    test = centers[1] + torch.randn(16, 5) * 0.5
    w = r.weights(test, mode="soft", granularity="sample")
    assert w.shape == (16, 3) and (w.argmax(1) == 1).all()
    mix = torch.cat([test[:10], centers[2] + torch.randn(6, 5) * 0.5])
    soft = r.weights(mix)
    assert torch.allclose(soft, torch.tensor([0.0, 10 / 16, 6 / 16]))
    hard = r.weights(mix, mode="hard")
    assert torch.equal(hard, torch.tensor([0.0, 1.0, 0.0]))
    hs = r.weights(mix, mode="hard", granularity="sample")
    assert torch.equal(hs.argmax(1), torch.tensor([1] * 10 + [2] * 6))


def test_router_errors():
    r = KNNRouter(k=3)
    with pytest.raises(RuntimeError, match="fit"):
        r.predict_proba(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="fewer than k"):
        r.fit(torch.zeros(2, 2), [0, 1])
    r.fit(torch.randn(6, 2), [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        r.predict_proba(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        r.predict_proba(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="mode"):
        r.weights(torch.zeros(1, 2), mode="lukewarm")
    with pytest.raises(ValueError):
        KNNRouter(k=0)


def test_collect_query_features():
    loaders = {"a": [(torch.ones(4, 2), None), (torch.ones(4, 2), None)], "b": [torch.zeros(3, 2)] * 3}
    f, y = collect_query_features(lambda x: x * 2, loaders, n_per_task=5)
    assert f.shape == (10, 2) and y.tolist() == [0] * 5 + [1] * 5
    assert torch.all(f[:5] == 2)
