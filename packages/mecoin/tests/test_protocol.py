"""Splits (clean and legacy), session edge masks and normalisation, metrics."""

import numpy as np
import pytest
import torch

from mecoin import SessionGraphs, build_task, gcn_adjacency, symmetric_edges
from mecoin.data import legacy_base_session
from papers_shared.metrics import AccuracyMatrix, average_accuracy, forgetting, performance_drop


def test_clean_split_is_disjoint_with_exact_shots(tiny_experiment):
    task = build_task(tiny_experiment(), seed=3)
    split, y = task.split, task.data.y
    seen = set()
    for s in split:
        assert not set(s.classes) & seen, "every session's classes are new"
        seen |= set(s.classes)
        for c in s.classes:
            assert int((y[s.support_idx] == c).sum()) == 3
        for a, b in ((s.support_idx, s.test_idx), (s.support_idx, s.val_idx), (s.val_idx, s.test_idx)):
            assert not torch.isin(a, b).any()
    all_test = torch.cat([s.test_idx for s in split])
    all_sup = torch.cat([s.support_idx for s in split])
    assert not torch.isin(all_sup, all_test).any()
    assert not torch.isin(task.pretrain_train_idx, all_test).any()


def test_legacy_split_reproduces_the_leak(tiny_experiment):
    """The official split puts support (and val) nodes into the test set, on purpose (official
    ``utils/split_data.py:load_raw_data`` lists every node twice)."""
    cfg = tiny_experiment()
    cfg.protocol.apply_legacy()
    task = build_task(cfg, seed=3)
    for s in task.split.sessions[1:]:
        assert torch.isin(s.support_idx, s.test_idx).all()
    s0 = task.split[0]  # shuffled doubled lists: most (not all) base supports reappear in test
    assert torch.isin(s0.support_idx, s0.test_idx).any()
    assert torch.isin(task.pretrain_train_idx, s0.test_idx).any(), "base test overlaps pre-training nodes"
    assert task.pretrain_train_idx.unique().numel() < task.pretrain_train_idx.numel(), "repeats"


def test_legacy_base_session_cut_points():
    y = torch.tensor([0] * 10 + [1] * 5)
    sup, val, test, tr, va, te = legacy_base_session(
        y, [0, 1], shots=2, generator=torch.Generator().manual_seed(0)
    )
    # class 0: doubled list of 20 -> support 2, val [2:4], test [4:]; pre-train ceil(12), ceil(4), rest 4
    # class 1: doubled list of 10 -> support 2, val [2:2] (empty), test [2:]; pre-train 6, 2, 2
    assert (sup.numel(), val.numel(), test.numel()) == (4, 2, 16 + 8)
    assert (tr.numel(), va.numel(), te.numel()) == (12 + 6, 4 + 2, 4 + 2)
    for c, n in ((0, 10), (1, 5)):
        nodes = torch.cat([sup, val, test])
        assert int((y[nodes] == c).sum()) == 2 * n, "every node appears twice"


def test_session_graph_has_no_unseen_edges(graph):
    graphs = SessionGraphs(graph.edge_index, graph.y)
    seen = [0, 2, 3]
    ei, ew = graphs.for_classes(seen)
    ok = torch.isin(graph.y, torch.tensor(seen))
    assert ok[ei[0]].all() and ok[ei[1]].all()
    assert torch.isfinite(ew).all() and (ew > 0).all()


def test_default_renormalises_legacy_reuses_full_weights(graph):
    n = graph.num_nodes
    seen = [0, 1]
    full_ei, full_w = SessionGraphs(graph.edge_index, graph.y).full_graph()
    full = dict(zip(map(tuple, full_ei.T.tolist()), full_w.tolist()))
    legacy_ei, legacy_w = SessionGraphs(graph.edge_index, graph.y, renormalize=False).for_classes(seen)
    for e, w in zip(map(tuple, legacy_ei.T.tolist()), legacy_w.tolist()):
        assert w == pytest.approx(full[e])
    ei, w = SessionGraphs(graph.edge_index, graph.y).for_classes(seen)
    # recomputed: the weighted degree of every kept node is sum_j 1/sqrt(d_i d_j) with its masked degree
    A = torch.zeros(n, n)
    A[ei[0], ei[1]] = w
    kept = torch.isin(graph.y, torch.tensor(seen))
    deg = torch.zeros(n)
    deg.index_add_(0, ei[0], torch.ones(ei.shape[1]))
    dinv = deg[kept].rsqrt()
    torch.testing.assert_close(A[kept][:, kept], dinv[:, None] * (A[kept][:, kept] > 0) * dinv[None, :])


def test_gcn_adjacency_matches_dense_formula():
    ei = symmetric_edges(torch.tensor([[0, 1, 2, 2], [1, 2, 0, 2]]), 4)
    assert ei.shape[1] == 6, "symmetrised, self loop removed"
    e, w = gcn_adjacency(ei, 4)
    A = torch.zeros(4, 4)
    A[ei[0], ei[1]] = 1.0
    A = A + torch.eye(4)
    d = A.sum(1).rsqrt()
    dense = torch.zeros(4, 4)
    dense[e[0], e[1]] = w
    torch.testing.assert_close(dense, d[:, None] * A * d[None, :])


def test_symmetric_edges_rejects_bad_edge_index():
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        symmetric_edges(torch.zeros(3, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="integer"):
        symmetric_edges(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match="outside"):
        symmetric_edges(torch.tensor([[0], [9]]), 5)


def test_metrics_on_hand_written_matrix():
    a = np.array(
        [
            [0.90, np.nan, np.nan, np.nan],
            [0.80, 0.70, np.nan, np.nan],
            [0.85, 0.60, 0.50, np.nan],
            [0.60, 0.65, 0.40, 0.30],
        ]
    )
    accs = [0.90, 0.76, 0.65, 0.50]
    assert performance_drop(accs) == pytest.approx(0.40)
    assert average_accuracy(accs) == pytest.approx(np.mean(accs))
    # groups 0..2: max over rows s..T-1 (row 2 is the max for group 0: the continuum off-by-one case)
    expect = np.mean([0.90 - 0.60, 0.70 - 0.65, 0.50 - 0.40])
    assert forgetting(AccuracyMatrix.from_array(a)) == pytest.approx(expect)
    # the off-by-one version (max over rows s..T-2, mean over s < T-1) differs
    assert expect != pytest.approx(np.mean([0.90 - 0.60, 0.70 - 0.65]))


def test_bad_graphs_and_features_are_rejected(tiny_experiment, graph):
    from mecoin import GCNEncoder, build_task

    cfg = tiny_experiment()
    bad = graph.clone()
    bad.x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        build_task(cfg, 0, data=bad)
    bad = graph.clone()
    bad.y = bad.y.float()
    with pytest.raises(ValueError, match="integer class ids"):
        build_task(cfg, 0, data=bad)
    enc = GCNEncoder(8, 16)
    with pytest.raises(ValueError, match="columns"):
        enc(torch.randn(5, 7), graph.edge_index[:, :0])
    with pytest.raises(ValueError, match="floating point"):
        enc(torch.ones(5, 8, dtype=torch.long), graph.edge_index[:, :0])


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda ei, n: ei.float(), "integer node ids, got dtype torch.float32"),
        (lambda ei, n: ei.bool(), "integer node ids"),
        (lambda ei, n: ei.t().contiguous(), r"shape \[2, E\], got \(\d+, 2\) \(transpose it"),
        (lambda ei, n: ei[0], r"shape \[2, E\]"),
        (lambda ei, n: ei.reshape(1, 2, -1), r"shape \[2, E\]"),
        (lambda ei, n: torch.cat([ei, torch.tensor([[0], [n]])], 1), r"outside \[0, 60\) for 60 nodes"),
        (lambda ei, n: torch.cat([ei, torch.tensor([[-1], [0]])], 1), r"node ids in \[-1, "),
    ],
)
def test_bad_edge_index_is_rejected(tiny_experiment, graph, edit, match):
    from papers_shared.errors import InputError

    bad = graph.clone()
    bad.edge_index = edit(graph.edge_index, graph.num_nodes)
    with pytest.raises(InputError, match=match):
        build_task(tiny_experiment(), 0, data=bad)
    # int32 ids are fine
    ok = graph.clone()
    ok.edge_index = graph.edge_index.int()
    assert build_task(tiny_experiment(), 0, data=ok).num_classes == 6


def test_mecoin_rejects_bad_embeddings(model):
    with pytest.raises(ValueError, match="NaN or inf"):
        model.forward_embeddings(torch.full((3, 16), float("inf")))
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        model.forward_embeddings(torch.randn(3, 15))
