import math

import pytest
import torch
import torch.nn.functional as F

from g2g_fscil.graphs import collapse_index, cosine_adjacency, offdiag_vec, represent
from g2g_fscil.interaction import (
    edge_similarity,
    g2g_similarity,
    node_similarity,
    normalise,
    sharpen,
    softabs,
    v2v_similarity,
    weightings,
)


def _graph(b, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, m, d, generator=g)
    return z, cosine_adjacency(z)


def test_v2v_reduction_m1():
    """With M = 1 the edge term drops (alpha forced to 1) and G2G == V2V."""
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
    zq, zp = represent(q, "tanh")[:, None], represent(p, "tanh")[:, None]
    s_g2g = g2g_similarity(zq, cosine_adjacency(zq), zp, cosine_adjacency(zp), alpha=0.3)
    s_v2v = v2v_similarity(q, p, "tanh")
    torch.testing.assert_close(s_g2g, s_v2v, atol=1e-6, rtol=0)


def test_v2v_matches_hand_cosine():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    s = v2v_similarity(q, p, "real")
    torch.testing.assert_close(s, torch.tensor([[1 / math.sqrt(2), 0.0]]))


def test_adjacency_symmetric_bounded_zero_diag():
    z, a = _graph(4, 6, 5)
    assert torch.allclose(a, a.transpose(-1, -2), atol=1e-6)
    assert torch.all(torch.diagonal(a, dim1=-2, dim2=-1) == 0)
    assert a.abs().max() <= 1 + 1e-6
    zn = F.normalize(z, dim=-1)
    torch.testing.assert_close(a[0, 1, 2], (zn[0, 1] * zn[0, 2]).sum())


def test_edge_similarity_one_for_equal_graphs_and_frobenius_hand():
    _, a = _graph(2, 4, 3)
    s = edge_similarity(a, a, "cosine")
    torch.testing.assert_close(torch.diagonal(s), torch.ones(2), atol=1e-6, rtol=0)
    sf = edge_similarity(a, a, "frobenius")
    torch.testing.assert_close(torch.diagonal(sf), torch.ones(2), atol=1e-5, rtol=0)
    # hand value: M = 2, A = [[0, 1], [1, 0]], Ac = [[0, -1], [-1, 0]] -> ||.||^2 = 8, 1 - 8 / (4*2*1) = 0
    a1 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    a2 = -a1
    assert float(edge_similarity(a1, a2, "frobenius")) == pytest.approx(0.0, abs=1e-6)
    assert float(edge_similarity(a1, a2, "cosine")) == pytest.approx(-1.0, abs=1e-6)


def test_g2g_rotation_invariant():
    z, a = _graph(3, 4, 6, 1)
    zc, ac = _graph(2, 4, 6, 2)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3)))
    s = g2g_similarity(z, a, zc, ac)
    zr, zcr = z @ q, zc @ q
    s_rot = g2g_similarity(zr, cosine_adjacency(zr), zcr, cosine_adjacency(zcr))
    torch.testing.assert_close(s, s_rot, atol=1e-5, rtol=0)


def test_g2g_combines_node_and_edge():
    z, a = _graph(3, 4, 6, 1)
    zc, ac = _graph(2, 4, 6, 2)
    s = g2g_similarity(z, a, zc, ac, alpha=0.25)
    ref = 0.25 * node_similarity(z, zc) + 0.75 * edge_similarity(a, ac)
    torch.testing.assert_close(s, ref)
    # aligned node term by hand for one pair
    hand = sum(F.cosine_similarity(z[0, i], zc[1, i], dim=0) for i in range(4)) / 4
    torch.testing.assert_close(node_similarity(z, zc)[0, 1], hand)


def test_soft_vs_aligned_on_permutation():
    """Permuted prototype nodes -> soft S_node = 1, aligned < 1."""
    z, _ = _graph(1, 5, 8, 4)
    zp = z[:, torch.tensor([2, 0, 4, 1, 3])]
    assert float(node_similarity(z, zp, "soft")) == pytest.approx(1.0, abs=1e-6)
    assert float(node_similarity(z, zp, "aligned")) < 0.999


def test_softabs_formula_and_weightings():
    x = torch.tensor([-1.0, -0.3, 0.0, 0.4, 0.9])
    ref = 1 / (1 + torch.exp(-10 * (x - 0.5))) + 1 / (1 + torch.exp(-10 * (-x - 0.5)))
    torch.testing.assert_close(softabs(x, 10.0), ref)
    torch.testing.assert_close(sharpen(x, "abs"), x.abs())
    torch.testing.assert_close(sharpen(x, "scaledexp", 2.0), torch.exp(2 * x))
    w = weightings(torch.randn(4, 7), "softabs", 10.0)
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    torch.testing.assert_close(normalise(torch.tensor([[1.0, 3.0]])), torch.tensor([[0.25, 0.75]]))
    with pytest.raises(ValueError, match="unknown sharpening"):
        sharpen(x, "bogus")


def test_knn_sparsification_symmetric():
    z, _ = _graph(1, 6, 4, 5)
    a = cosine_adjacency(z, knn=1)
    assert torch.allclose(a, a.transpose(-1, -2))
    # each row keeps its own best neighbour
    full = cosine_adjacency(z).masked_fill(torch.eye(6, dtype=torch.bool), -2)
    best = full[0].argmax(1)
    assert torch.all(a[0, torch.arange(6), best] != 0)
    assert int((a[0] != 0).sum()) < 30


def test_collapse_index_and_offdiag():
    z = torch.ones(2, 4, 3)
    assert collapse_index(cosine_adjacency(z)) == pytest.approx(1.0, abs=1e-6)
    a = torch.arange(9.0).view(3, 3)
    torch.testing.assert_close(offdiag_vec(a), torch.tensor([1.0, 2, 3, 5, 6, 7]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="expects"):
        v2v_similarity(torch.randn(2, 3), torch.randn(2, 4))
    z, a = _graph(2, 4, 3)
    zc, ac = _graph(2, 3, 3)
    with pytest.raises(ValueError, match="same M"):
        g2g_similarity(z, a, zc, ac)
    with pytest.raises(ValueError, match="node_match"):
        node_similarity(z, z, "fuzzy")
