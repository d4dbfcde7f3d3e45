"""Encoders and base-session pre-training (official ``backbone/model.py`` and ``pretrain.py``)."""

import pytest
import torch

from mecoin import EncoderConfig, GATEncoder, GCNEncoder, build_encoder, gcn_adjacency, pretrain_encoder
from mecoin.config import PretrainConfig
from mecoin.graph import symmetric_edges


def _dense_adj(edge_index, edge_weight, n):
    a = torch.zeros(n, n)
    a[edge_index[1], edge_index[0]] = edge_weight
    return a


def test_gcn_encoder_matches_dense_formula(graph):
    torch.manual_seed(0)
    enc = GCNEncoder(8, 16).eval()
    n = graph.num_nodes
    ei, ew = gcn_adjacency(symmetric_edges(graph.edge_index, n), n)
    a = _dense_adj(ei, ew, n)
    w1, b1 = enc.conv1.lin.weight.T, enc.conv1.bias
    w2, b2 = enc.conv2.lin.weight.T, enc.conv2.bias
    assert w1.shape == (8, 32) and w2.shape == (32, 16)
    expect = a @ torch.relu(a @ graph.x @ w1 + b1) @ w2 + b2
    torch.testing.assert_close(enc(graph.x, ei, ew), expect, atol=1e-5, rtol=1e-4)
    bound = 1 / 32**0.5  # Kipf-style uniform init
    assert w1.abs().max() <= bound and b1.abs().max() <= bound


def test_gat_and_generic_convs(graph):
    torch.manual_seed(0)
    gat = GATEncoder(8, 16, heads=2).eval()
    assert gat.conv1.heads == 2 and gat.conv1.out_channels == 32
    out = gat(graph.x, graph.edge_index)
    assert out.shape == (graph.num_nodes, 16) and (out >= -1).all()  # ELU output
    legacy = build_encoder(EncoderConfig(backbone="gat", hidden=16, heads=2, legacy=True), 8).eval()
    torch.testing.assert_close(legacy(graph.x, graph.edge_index).exp().sum(1), torch.ones(graph.num_nodes))
    sage = build_encoder(EncoderConfig(backbone="SAGEConv", hidden=16), 8)
    assert sage(graph.x, graph.edge_index).shape == (graph.num_nodes, 16)
    with pytest.raises(ValueError, match="not a torch_geometric.nn conv"):
        build_encoder(EncoderConfig(backbone="NoSuchConv"), 8)


def test_pretraining_learns_and_keeps_best_state(graph):
    torch.manual_seed(0)
    n = graph.num_nodes
    ei, ew = gcn_adjacency(symmetric_edges(graph.edge_index, n), n)
    perm = torch.randperm(n)
    tr, va = perm[:36], perm[36:]
    enc = GCNEncoder(8, 16)
    before = [p.clone() for p in enc.parameters()]
    cfg = PretrainConfig(max_epochs=60, eval_every=5, patience=3)
    res = pretrain_encoder(enc, graph.x, graph.y, ei, ew, tr, va, 6, cfg)
    assert any(not torch.equal(a, b) for a, b in zip(before, res.encoder.parameters()))
    assert res.epochs_run <= 60 and res.best_epoch <= res.epochs_run
    with torch.no_grad():
        acc = (
            (res.classifier(res.encoder.eval()(graph.x, ei, ew))[va].argmax(1) == graph.y[va]).float().mean()
        )
    assert float(acc) == pytest.approx(res.best_val_acc, abs=1e-6)
    assert res.best_val_acc > 1 / 6 + 0.2  # well above chance on a separable CSBM
    with pytest.raises(ValueError, match="at least one training node"):
        pretrain_encoder(GCNEncoder(8, 16), graph.x, graph.y, ei, ew, tr[:0], va, 6, cfg)
