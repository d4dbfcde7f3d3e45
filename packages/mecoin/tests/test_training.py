"""Sparse gradients, frozen encoder, GKIM, old-class stability."""

import copy

import pytest
import torch

from mecoin import GCNEncoder, Mecoin, build_task, gkim_loss, kl_divergence, pretrain_task
from mecoin.graph import SessionGraphs
from mecoin.meco import MultiHeadAttention
from mecoin.method import MecoinMethod
from mecoin.session import SessionContext, clip_grad_norm, legacy_train_mode

H, C, P, K = 16, 4, 8, 6


def _retrieved_rows(model, index):
    return set(model.mram.flat_index(index).flatten().tolist())


def test_gradient_reaches_only_retrieved_values(model):
    with torch.no_grad():
        model.mram.values.normal_()
    h = torch.randn(5, H)
    out = model.forward_embeddings(h)
    loss, _ = gkim_loss(out.logits_gnn, out.logits_mram, torch.tensor([0, 1, 2, 3, 4]))
    loss.backward()
    nonzero = set(torch.nonzero(model.mram.values.grad.abs().sum(1)).flatten().tolist())
    assert nonzero and nonzero <= _retrieved_rows(model, out.key_index)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert not model.smu.keys.requires_grad and not model.grp.proj.requires_grad
    for module in (model.graphinfo, model.interaction):
        assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_legacy_graphinfo_and_meco_get_no_gradient(tiny_cfg):
    tiny_cfg.apply_legacy()
    m = Mecoin(GCNEncoder(8, H), tiny_cfg)
    held = m.trainable_parameters()
    assert any(p is m.graphinfo.out.weight for p in held), "legacy hands GraphInfo to the optimiser"
    out = m.forward_embeddings(torch.randn(5, H))
    gkim_loss(out.logits_gnn, out.logits_mram, torch.arange(5))[0].backward()
    for module in (m.graphinfo, m.interaction):
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in module.parameters())


def test_sparse_retrieval_gives_sparse_gradient_and_sparse_update(model):
    with torch.no_grad():
        model.mram.values.normal_()
    before = model.mram.values.detach().clone()
    opt = torch.optim.SparseAdam([model.mram.values], lr=0.1)
    out = model.forward_embeddings(torch.randn(4, H), sparse=True)
    gkim_loss(out.logits_gnn, out.logits_mram, torch.arange(4), mode="none")[0].backward()
    assert model.mram.values.grad.is_sparse
    clip_grad_norm([model.mram.values], 1e-3)
    opt.step()
    changed = set(torch.nonzero((model.mram.values != before).any(1)).flatten().tolist())
    assert changed and changed <= _retrieved_rows(model, out.key_index)


def test_clip_grad_norm_dense_matches_torch():
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(torch.randn(3))
    a.grad, b.grad = torch.randn(5), torch.randn(3)
    ref = [a.grad.clone(), b.grad.clone()]
    total = clip_grad_norm([a, b], 0.5)
    x = torch.nn.Parameter(torch.zeros(5))
    y = torch.nn.Parameter(torch.zeros(3))
    x.grad, y.grad = ref
    assert total == pytest.approx(float(torch.nn.utils.clip_grad_norm_([x, y], 0.5)), rel=1e-5)
    torch.testing.assert_close(a.grad, x.grad)


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(8, 2).eval()
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(3, 7, 8)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    assert MultiHeadAttention(13, 2)(torch.randn(2, 4, 13)).shape == (2, 4, 13)


# ---------------------------------------------------------------- GKIM (item 10)
def _manual_kl(a, b, T):
    p, q = torch.softmax(a / T, -1), torch.softmax(b / T, -1)
    return (p * (p.log() - q.log())).sum(-1).mean()


def test_gkim_matches_manual_formula():
    torch.manual_seed(0)
    g, m, y = torch.randn(6, K), torch.randn(6, K), torch.randint(0, K, (6,))
    loss, parts = gkim_loss(g, m, y, T=2.0, kl_weight=0.5, label_smoothing=0.1)
    ce = torch.nn.functional.cross_entropy(g, y, label_smoothing=0.1)
    expect = 0.5 * 4 * _manual_kl(g, m, 2.0) + 0.5 * 4 * _manual_kl(m, g, 2.0) + ce
    torch.testing.assert_close(loss, expect)
    assert parts["kl_gnn_mram"] == pytest.approx(float(0.5 * 4 * _manual_kl(g, m, 2.0)), rel=1e-5)
    # T² scaling: the KL terms at T=2 are 4 x the unscaled KL
    assert float(kl_divergence(g, m, 2.0)) == pytest.approx(float(_manual_kl(g, m, 2.0)), rel=1e-5)


def test_gkim_kl_vanishes_for_equal_logits():
    g = torch.randn(4, K)
    _, parts = gkim_loss(g, g.clone(), torch.arange(4))
    assert parts["kl_gnn_mram"] == pytest.approx(0.0, abs=1e-7)
    assert parts["kl_mram_gnn"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mode,teacher", [("gnn_to_mram", "g"), ("mram_to_gnn", "m")])
def test_one_way_distillation_detaches_teacher(mode, teacher):
    g = torch.randn(4, K, requires_grad=True)
    m = torch.randn(4, K, requires_grad=True)
    y = torch.arange(4)
    loss, parts = gkim_loss(g, m, y, mode=mode, ce_weight=0.0)
    loss.backward()
    t, s = (g, m) if teacher == "g" else (m, g)
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    assert torch.count_nonzero(s.grad) > 0
    assert len([k for k in parts if k.startswith("kl")]) == 1


def test_distill_none_trains_mram_by_cross_entropy():
    g, m = torch.randn(4, K), torch.randn(4, K, requires_grad=True)
    y = torch.arange(4)
    loss, parts = gkim_loss(g, m, y, mode="none", label_smoothing=0.0)
    expect = torch.nn.functional.cross_entropy(g, y) + torch.nn.functional.cross_entropy(m, y)
    torch.testing.assert_close(loss, expect)
    assert "ce_mram" in parts and not any(k.startswith("kl") for k in parts)


def test_gkim_rejects_bad_input():
    g = torch.randn(4, K)
    with pytest.raises(ValueError, match="distill mode"):
        gkim_loss(g, g, torch.arange(4), mode="both")
    with pytest.raises(ValueError, match="NaN or inf"):
        gkim_loss(g, g.clone().fill_(float("nan")), torch.arange(4))
    with pytest.raises(ValueError, match=r"\[n, K\]"):
        gkim_loss(g, torch.randn(4, K + 1), torch.arange(4))
    with pytest.raises(ValueError, match="integer class ids"):
        gkim_loss(g, g, torch.arange(4).float())


# ---------------------------------------------------------------- session training
def _setup(cfg, t_max=None):
    task = build_task(cfg, seed=0)
    pre = pretrain_task(task, cfg, seed=0, device=torch.device("cpu"))
    graphs = SessionGraphs(task.data.edge_index, task.data.y)

    def ctx(t):
        ei, ew = graphs.for_classes(task.split.seen_classes(t))
        return SessionContext(task, t, cfg.protocol, ei, ew, torch.device("cpu"))

    trainer = MecoinMethod(copy.deepcopy(cfg.mecoin))
    trainer.setup(ctx(0), pre)
    return task, trainer, ctx


def test_encoder_bitwise_frozen_during_sessions(tiny_experiment):
    task, trainer, ctx = _setup(tiny_experiment())
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    for t in range(len(task.split)):
        trainer.fit_session(ctx(t))
    after = trainer.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.count_nonzero(trainer.model.mram.values) > 0


def test_old_class_logits_stable_when_their_rows_are_untouched(tiny_experiment):
    """Item 14: an old-class test node whose retrieved rows did not change keeps its logits."""
    cfg = tiny_experiment(
        mram_optimizer="sparse_adam",
        replay_supports=False,
        attn_dropout=0.0,
        num_codebooks=2,
        keys_per_codebook=64,
    )
    task, trainer, ctx = _setup(cfg)
    trainer.fit_session(ctx(0))
    c1 = ctx(1)
    old_test = torch.cat([task.split[0].test_idx])
    before_logits = trainer.logits(c1, old_test)
    values_before = trainer.model.mram.values.detach().clone()
    trainer.fit_session(c1)
    changed = (trainer.model.mram.values != values_before).any(1)
    after_logits = trainer.logits(c1, old_test)
    index = trainer.model.key_index(trainer.embeddings(c1)[old_test])
    touched = changed[trainer.model.mram.flat_index(index)].any(1)
    assert (~touched).any(), "the test needs old nodes whose rows were not updated"
    torch.testing.assert_close(after_logits[~touched], before_logits[~touched])


def test_replay_switch_changes_training_set(tiny_experiment):
    task, trainer, ctx = _setup(tiny_experiment())
    c = ctx(2)
    assert trainer.train_idx(c).numel() == sum(task.split[s].support_idx.numel() for s in range(3))
    trainer.config.replay_supports = False
    assert torch.equal(trainer.train_idx(c), task.split[2].support_idx)


def test_legacy_mode_schedule():
    on = [e for e in range(302) if legacy_train_mode(0, e)]
    assert on == [0, 1, 101, 201, 301]
    assert [e for e in range(202) if legacy_train_mode(3, e)] == [1, 101, 201]


def test_interrupted_run_resumes_to_the_same_result(tiny_experiment, tmp_path):
    """Atomic per-session checkpoints: a run killed after session 1 and resumed gives the same numbers."""
    from mecoin import build_method, build_task, pretrain_task, run_method

    cfg = tiny_experiment()
    dev = torch.device("cpu")
    task = build_task(cfg, 0)
    pre = pretrain_task(task, cfg, 0, dev)
    full = run_method(task, pre, cfg, build_method("mecoin", cfg, 0), 0, dev)

    method = build_method("mecoin", cfg, 0)
    fit = method.fit_session

    def crash_at_2(ctx):
        if ctx.t == 2:
            raise KeyboardInterrupt
        return fit(ctx)

    method.fit_session = crash_at_2
    with pytest.raises(KeyboardInterrupt):
        run_method(task, pre, cfg, method, 0, dev, checkpoint_dir=tmp_path)
    resumed = run_method(
        task, pre, cfg, build_method("mecoin", cfg, 0), 0, dev, checkpoint_dir=tmp_path, resume=True
    )
    assert resumed.accs == pytest.approx(full.accs)
    assert resumed.acc_matrix == full.acc_matrix
