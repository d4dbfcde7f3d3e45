"""GRP, shapes, GraphInfo equivariance, retrieval, EMA k-means, dead codes, readout."""

import pytest
import torch

from mecoin import GaussianRandomProjection, GraphInfo, Mecoin, MecoinConfig, MemoryInteraction, MRaM
from mecoin.smu import StructuredMemoryUnit, squared_distances

H, C, P, K = 16, 4, 8, 6  # the tiny sizes of conftest.py


def test_grp_is_fixed_unit_norm_buffer():
    grp = GaussianRandomProjection(C, H, 5, seed=3)
    assert "proj" in dict(grp.named_buffers()) and not list(grp.parameters())
    assert not grp.proj.requires_grad
    torch.testing.assert_close(grp.proj.norm(dim=1), torch.ones(C, 5))
    h = torch.randn(7, H)
    a, b = grp(h), grp(h)
    assert torch.equal(a, b) and a.shape == (7, C, 5)
    torch.testing.assert_close(a[2, 1], h[2] @ grp.proj[1])
    other = GaussianRandomProjection(C, H, 5, seed=99)
    other.load_state_dict(grp.state_dict())
    assert torch.equal(other(h), a)


@pytest.mark.parametrize("use_graphinfo", [True, False])
def test_output_shapes(tiny_cfg, use_graphinfo):
    from mecoin import GCNEncoder

    tiny_cfg.use_graphinfo = use_graphinfo
    m = Mecoin(GCNEncoder(8, H), tiny_cfg)
    out = m.forward_embeddings(torch.randn(9, H))
    d_k = 5 + int(use_graphinfo)
    assert out.query.shape == out.matched_query.shape == (9, C, d_k)
    assert out.logits_mram.shape == out.logits_gnn.shape == (9, K)
    assert out.key_index.shape == out.key_dist.shape == (9, C)
    assert out.key_index.dtype == torch.long


def test_graphinfo_permutation_equivariant():
    torch.manual_seed(0)
    gi = GraphInfo(H, C, heads=2, dropout=0.5).eval()
    h = torch.randn(11, H)
    perm = torch.randperm(11)
    torch.testing.assert_close(gi(h)[perm], gi(h[perm]), atol=1e-5, rtol=1e-5)
    # set-level: a node's scalar depends on the other nodes of the set
    assert not torch.allclose(gi(h)[:3], gi(h[:3]))


def test_graphinfo_chunk_mode_scores_chunks_separately():
    gi = GraphInfo(H, C, batch="chunk", chunk=4).eval()
    h = torch.randn(10, H)
    torch.testing.assert_close(gi(h), torch.cat([gi.forward_set(p) for p in h.split(4)]))


def test_legacy_codebook_interaction_is_per_node():
    """Attention runs over the C codebooks of each node: one node's q̃ ignores the other nodes."""
    torch.manual_seed(0)
    inter = MemoryInteraction(6, heads=2, dropout=0.5).eval()
    q = torch.randn(5, C, 6)
    torch.testing.assert_close(inter(q)[2:3], inter(q[2:3]))


def test_cross_interaction_attends_to_active_keys_only():
    torch.manual_seed(0)
    inter = MemoryInteraction(6, heads=2, mode="cross").eval()
    q, keys = torch.randn(5, C, 6), torch.randn(C, P, 6)
    mask = torch.zeros(P, dtype=torch.bool)
    mask[:3] = True
    a = inter(q, keys, mask)
    keys2 = keys.clone()
    keys2[:, 3:] += 10.0  # inactive keys may change freely
    torch.testing.assert_close(a, inter(q, keys2, mask))
    assert not torch.allclose(a, inter(q, keys2))
    with pytest.raises(ValueError, match="needs the SMU keys"):
        inter(q)


def test_retrieval_equals_brute_force():
    torch.manual_seed(1)
    smu = StructuredMemoryUnit(C, P, 6, seed=2)
    q = torch.randn(13, C, 6)
    idx, dist = smu.nearest(q)
    for b in range(13):
        for c in range(C):
            d = [float(((q[b, c] - smu.keys[c, j]) ** 2).sum()) for j in range(P)]
            j = min(range(P), key=d.__getitem__)
            assert idx[b, c] == j
            assert dist[b, c] == pytest.approx(d[j], rel=1e-4, abs=1e-5)


def test_retrieval_chunking_matches_one_block():
    smu = StructuredMemoryUnit(C, P, 6, seed=2, max_chunk_elems=C * P * 3)  # 3 nodes per chunk
    q = torch.randn(20, C, 6)
    idx, _ = smu.nearest(q)
    assert torch.equal(idx, squared_distances(q, smu.keys).argmin(-1))


def test_ema_kmeans_step_gives_cluster_means():
    smu = StructuredMemoryUnit(C, P, 6, ema_decay=0.0, eps=1e-12, seed=0)
    q = torch.randn(40, C, 6)
    idx, _ = smu.nearest(q)
    smu.construct_step(q, dead_threshold=0.0)
    for c in range(C):
        for j in idx[:, c].unique():
            torch.testing.assert_close(smu.keys[c, j], q[idx[:, c] == j, c].mean(0), atol=1e-5, rtol=1e-5)


def test_ema_statistics_hand_computed():
    """One key per codebook, two queries: N = 0.05·2, S = 0.95·K0 + 0.05·(q1+q2), K = S/Ñ."""
    smu = StructuredMemoryUnit(1, 1, 2, ema_decay=0.95, eps=1e-5, seed=0)
    k0 = smu.keys.clone()
    q = torch.tensor([[[1.0, 2.0]], [[3.0, -2.0]]])
    smu.construct_step(q, dead_threshold=0.0)
    torch.testing.assert_close(smu.ema_count, torch.tensor([[0.1]]))
    s = 0.95 * k0 + 0.05 * torch.tensor([4.0, 0.0])
    torch.testing.assert_close(smu.ema_sum, s)
    n_tilde = (0.1 + 1e-5) / (0.1 + 1e-5) * 0.1
    torch.testing.assert_close(smu.keys, s / n_tilde)


def test_laplace_smoothing_two_keys():
    smu = StructuredMemoryUnit(1, 2, 1, ema_decay=0.0, eps=0.5, seed=0)
    smu.keys.copy_(torch.tensor([[[0.0], [10.0]]]))
    q = torch.tensor([[[1.0]], [[2.0]], [[9.0]]])
    smu.construct_step(q, dead_threshold=0.0)
    n = torch.tensor([2.0, 1.0])
    n_tilde = (n + 0.5) / (3.0 + 1.0) * 3.0
    torch.testing.assert_close(smu.keys.flatten(), torch.tensor([3.0, 9.0]) / n_tilde)


def test_dead_code_reset_replaces_only_dead_keys():
    torch.manual_seed(0)
    smu = StructuredMemoryUnit(C, P, 6, ema_decay=0.0, seed=0)
    smu.ema_count.copy_(torch.tensor([0.0, 5.0] * (P // 2)).repeat(C, 1))
    before = smu.keys.clone()
    q = torch.randn(7, C, 6)
    dead = smu.expire_dead(q, threshold=1.0)
    assert torch.equal(dead, smu.ema_count < 1.0)
    assert torch.equal(smu.keys[~dead], before[~dead])
    for c in range(C):
        for j in torch.nonzero(dead[c]).flatten():
            assert (smu.keys[c, j] == q[:, c]).all(-1).any(), "a reset key must be a query of the batch"


def test_construct_then_freeze(model, graph):
    log = model.construct_memory(graph, torch.arange(30))
    assert bool(model.smu.frozen) and len(log) == 1
    assert torch.count_nonzero(model.mram.values) == 0
    with pytest.raises(RuntimeError, match="frozen"):
        model.smu.construct_step(torch.randn(3, C, 6), 0.0)


def test_readout_is_scaled_codebook_mean(model):
    with torch.no_grad():
        model.mram.values.normal_()
    model.mram.vote_scale = 3.0
    out = model.forward_embeddings(torch.randn(6, H))
    table = model.mram.table
    expect = torch.stack([table[torch.arange(C), out.key_index[b]].mean(0) for b in range(6)]) * 3.0
    torch.testing.assert_close(out.logits_mram, expect)


def test_zero_values_give_uniform_prediction(model):
    out = model.forward_embeddings(torch.randn(6, H))
    assert torch.count_nonzero(out.logits_mram) == 0
    torch.testing.assert_close(out.logits_mram.softmax(-1), torch.full((6, K), 1 / K))


def test_mram_inits():
    for init in ("rand", "randn"):
        m = MRaM(C, P, K, init=init)
        assert torch.count_nonzero(m.values) > 0
    with pytest.raises(ValueError, match="values_init"):
        MRaM(C, P, K, init="ones")


def test_class_layout_keys_are_class_means(graph):
    from mecoin import GCNEncoder

    cfg = MecoinConfig(num_classes=K, num_codebooks=C, proj_dim=5, memory_layout="class", attn_dropout=0.0)
    m = Mecoin(GCNEncoder(8, H), cfg).eval()
    assert m.smu.num_keys == K
    h, y = torch.randn(12, H), torch.tensor([0, 1] * 6)
    with pytest.raises(RuntimeError, match="no key"):
        m.forward_embeddings(h)
    m.add_classes([0, 1], h, y)
    _, qt = m.queries(h)
    torch.testing.assert_close(m.smu.keys[:, 0], qt[y == 0].mean(0))
    assert m.smu.active.tolist() == [True, True, False, False, False, False]
    assert set(m.forward_embeddings(h).key_index.unique().tolist()) <= {0, 1}
    keys = m.smu.keys.clone()
    m.add_classes([0], h + 1.0, y)  # a class key is written once
    assert torch.equal(keys, m.smu.keys)
