"""Baselines on the shared runner: TEEN calibration, NCM scores, EWC/LwF penalties, ER-GNN
buffer, Joint training set, and a full protocol run of every method."""

import pytest
import torch
import torch.nn.functional as F

from mecoin import build_method, build_task, pretrain_task, run_method, teen_calibrate
from mecoin.config import METHODS
from mecoin.session import SessionContext
from mecoin.trainer import session_graphs


def test_teen_calibration_matches_formula():
    torch.manual_seed(0)
    new, base = torch.randn(3, 5), torch.randn(4, 5)
    pn, pb = F.normalize(new, dim=-1), F.normalize(base, dim=-1)
    out = teen_calibrate(new, base, tau=16.0, weight=0.1)
    for i in range(3):
        a = torch.tensor([float(pn[i] @ pb[b]) for b in range(4)])
        w = torch.exp(16 * a) / torch.exp(16 * a).sum()
        mix = sum(w[b] * pb[b] for b in range(4))
        torch.testing.assert_close(out[i], 0.9 * pn[i] + 0.1 * mix / mix.norm(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(teen_calibrate(new, base, weight=0.0), pn)


def _run(cfg, name, seed=0):
    task = build_task(cfg, seed)
    pre = pretrain_task(task, cfg, seed, torch.device("cpu"))
    method = build_method(name, cfg, seed)
    report = run_method(task, pre, cfg, method, seed, torch.device("cpu"))
    return task, pre, method, report


def _ctx(task, cfg, t):
    ei, ew = session_graphs(task, cfg).for_classes(task.split.seen_classes(t))
    return SessionContext(task, t, cfg.protocol, ei, ew, torch.device("cpu"))


@pytest.mark.parametrize("name", [m for m in METHODS if m != "mecoin"])
def test_every_baseline_runs_the_protocol_and_round_trips(tiny_experiment, name):
    cfg = tiny_experiment()
    task, pre, method, rep = _run(cfg, name)
    T = len(task.split)
    assert len(rep.accs) == T and all(0.0 <= a <= 1.0 for a in rep.accs)
    assert all(rep.acc_matrix[t][s] is not None for t in range(T) for s in range(t + 1))
    assert rep.extra["memory_bytes"]
    # resume path: a fresh method loaded from the state scores exactly like the trained one
    clone = build_method(name, cfg, 0)
    clone.setup(_ctx(task, cfg, 0), pre)
    clone.load_state_dict(method.state_dict())
    last, nodes = _ctx(task, cfg, T - 1), torch.arange(task.data.num_nodes)
    torch.testing.assert_close(clone.logits(last, nodes), method.logits(last, nodes))


def test_ncm_scores_are_scaled_cosine_to_class_means(tiny_experiment):
    cfg = tiny_experiment()
    task, _, method, _ = _run(cfg, "ncm")
    T = len(task.split) - 1
    ctx = _ctx(task, cfg, T)
    emb = method.embeddings(ctx)
    sup = ctx.supports(T)
    c = task.split[T].classes[0]
    proto = emb[sup[task.data.y[sup] == c]].mean(0)
    torch.testing.assert_close(method.prototypes[c], proto)
    nodes = torch.arange(5)
    expect = cfg.baselines.ncm_temperature * F.normalize(emb[nodes], dim=-1) @ F.normalize(proto, dim=0)
    torch.testing.assert_close(method.logits(ctx, nodes)[:, c], expect)


def test_ewc_penalty_zero_at_anchor_and_hand_computed(tiny_experiment):
    cfg = tiny_experiment()
    task, _, method, _ = _run(cfg, "ewc")
    ctx = _ctx(task, cfg, 0)
    assert len(method.fisher) == len(task.split)  # one Fisher per session
    logits = torch.zeros(2, task.num_classes)
    idx = torch.arange(2)
    params = method.parameters()
    with torch.no_grad():  # put the weights at the last anchor: that session's term vanishes
        for p, s in zip(params, method.fisher[-1][1]):
            p.copy_(s)
    expect = sum(
        sum((f * (p - s) ** 2).sum() for f, p, s in zip(fisher, params, star))
        for fisher, star in method.fisher
    )
    got = method._penalty(ctx, idx, logits, None)
    torch.testing.assert_close(got, cfg.baselines.ewc_lambda * expect)
    method.fisher = method.fisher[-1:]
    assert float(method._penalty(ctx, idx, logits, None).detach()) == 0.0


def test_lwf_penalty_is_scaled_kl_on_old_classes(tiny_experiment):
    cfg = tiny_experiment()
    task, _, method, _ = _run(cfg, "lwf")
    ctx = _ctx(task, cfg, 1)
    teacher, logits = torch.randn(4, task.num_classes), torch.randn(4, task.num_classes)
    assert float(method._penalty(ctx, None, teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    old = ctx.old_classes
    T = cfg.baselines.lwf_temperature
    p = F.softmax(teacher[:, old] / T, 1)
    kl = (p * (p.log() - F.log_softmax(logits[:, old] / T, 1))).sum(1).mean()
    torch.testing.assert_close(
        method._penalty(ctx, None, logits, teacher), cfg.baselines.lwf_lambda * T * T * kl
    )


def test_ergnn_buffer_and_joint_training_set(tiny_experiment):
    cfg = tiny_experiment()
    task, _, er, _ = _run(cfg, "ergnn")
    y = task.data.y[er.buffer]
    per_class = torch.bincount(y, minlength=task.num_classes)
    seen = task.split.seen_classes(len(task.split) - 1)
    assert per_class[seen].tolist() == [cfg.baselines.er_per_class] * len(seen)
    _, _, joint, _ = _run(cfg, "joint")
    t = len(task.split) - 1
    ctx = _ctx(task, cfg, t)
    idx = joint.train_idx(ctx)
    expect = torch.cat([task.pretrain_train_idx] + [task.split[s].support_idx for s in range(1, t + 1)])
    assert torch.equal(idx.sort().values, expect.sort().values)


def test_probe_never_scores_a_test_node_with_a_probe_fitted_on_it(tiny_experiment):
    cfg = tiny_experiment()
    task, pre, method, rep = _run(cfg, "probe")
    T = len(task.split) - 1
    ctx = _ctx(task, cfg, T)
    test = torch.cat(ctx.test_groups())
    h = method.embeddings(ctx)
    for f in range(cfg.baselines.probe_folds):
        # refit fold f by hand without its test nodes: identical weights, and its nodes are scored by it
        from mecoin.baselines import fit_linear_probe

        labelled = torch.cat(
            [ctx.base_train_idx(), ctx.val_idx()] + [ctx.supports(s) for s in range(1, T + 1)]
        )
        idx = torch.cat([labelled, test[method.fold[test] != f]])
        w, b = fit_linear_probe(h[idx], ctx.labels(idx), task.num_classes, cfg.baselines.probe_epochs,
                                cfg.baselines.probe_lr)  # fmt: skip
        torch.testing.assert_close(method.weights[f], w)
        mine = test[method.fold[test] == f]
        torch.testing.assert_close(method.logits(ctx, mine), h[mine] @ w + b, atol=1e-5, rtol=1e-5)


def test_linear_probe_separates_separable_data():
    from mecoin.baselines import fit_linear_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(30)
    h = 5 * torch.eye(4, 8)[y] + 0.1 * torch.randn(120, 8, generator=g) + 3.0
    w, b = fit_linear_probe(h, y, 4, epochs=200, lr=0.05)
    assert float(((h @ w + b).argmax(1) == y).float().mean()) == 1.0


def test_finetune_last_keeps_the_last_state_and_joint_is_class_balanced(tiny_experiment):
    cfg = tiny_experiment()
    last = build_method("finetune_last", cfg, 0)
    assert last.name == "finetune_last" and last.kind == "finetune" and not last.select_best_val
    assert build_method("finetune", cfg, 0).select_best_val
    joint = build_method("joint", cfg, 0)
    y = torch.tensor([0] * 8 + [1] * 2 + [3] * 2)
    w = joint._class_weights(y, 5)
    torch.testing.assert_close(w, torch.tensor([0.5, 2.0, 0.0, 2.0, 0.0]))
    # every present class then carries the same total weight
    assert (torch.bincount(y, minlength=5).float() * w)[[0, 1, 3]].unique().numel() == 1
    assert build_method("finetune", cfg, 0)._class_weights(y, 5) is None
