import dataclasses

import pytest
import torch

from g2g_fscil.baselines.ncm import teen_calibrate
from g2g_fscil.baselines.v2v import method_config
from g2g_fscil.cag2g import augment_batch
from g2g_fscil.config import ExperimentConfig
from g2g_fscil.experiment import build_model, evaluate, run_fscil, write_base_memory
from g2g_fscil.trainer import incremental_session, metatrain, pretrain


def _exp(tiny_cfg, **kw):
    return ExperimentConfig(
        name="t",
        dataset="digits",
        data_root="",
        image_size=8,
        base_classes=6,
        ways=2,
        shots=5,
        num_sessions=None,
        pretrain_epochs=1,
        pretrain_lr=0.05,
        pretrain_step=5,
        device="cpu",
        model=tiny_cfg,
        **kw,
    )


def test_protocol_sessions_disjoint_and_growing(digits):
    """Sessions are disjoint, the seen label space grows by N per session, tests cover all seen classes."""
    split = digits.split
    split.check()
    assert split[0].classes == [0, 1, 2, 3, 4, 5]
    seen = set()
    for t, s in enumerate(split):
        assert not (set(s.classes) & seen)
        seen |= set(s.classes)
        assert len(split.seen_classes(t)) == 6 + 2 * t
        if t > 0:
            assert s.train_idx.numel() == 2 * 5
        y = digits.test_labels[split.test_idx_seen(t)]
        assert set(y.tolist()) == seen


def test_metatrain_gradient_flow_all_parameters(digits, tiny_cfg):
    net = build_model(digits, tiny_cfg)
    before = {k: v.clone() for k, v in net.named_parameters()}
    hist = metatrain(net, digits, iters=2, generator=torch.Generator().manual_seed(0))
    assert len(hist["loss"]) == 2 and all(torch.isfinite(torch.tensor(hist["loss"])))
    assert hist["lgp"][0] > 0 and hist["ca"][0] > 0
    changed = {k for k, v in net.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("backbone.") for k in changed)
    assert "proj.weight" in changed
    assert "head.weight" not in changed  # the pre-training head is not part of meta-training


def test_incremental_session_freezes_backbone(digits, tiny_cfg):
    """Backbone bitwise unchanged; only g_phi changes; memory grows by N per session."""
    net = build_model(digits, tiny_cfg)
    write_base_memory(net, digits)
    assert len(net.memory) == 6
    bb = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    proj = net.proj.weight.clone()
    old_feats = net.memory.feats.clone()
    incremental_session(net, digits, digits.split[1], generator=torch.Generator().manual_seed(0))
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, bb[k]), k
    assert not torch.equal(net.proj.weight, proj)
    assert len(net.memory) == 8
    assert torch.equal(net.memory.feats[:6], old_feats)
    r = evaluate(net, digits, 1)
    assert 0.0 <= r["acc"] <= 1.0 and r["novel_acc"] == r["novel_acc"]


def test_v2v_modes_bipolarise_and_nudge(digits, tiny_cfg):
    cfg2 = method_config(tiny_cfg, "v2v", 2)
    assert cfg2.interaction == "v2v" and cfg2.bipolarize and cfg2.lgp is None and not cfg2.cag2g
    cfg3 = method_config(tiny_cfg, "v2v", 3)
    assert cfg3.nudging_iter > 0
    cfg1 = dataclasses.replace(method_config(tiny_cfg, "v2v", 1), bipolarize=True)
    net = build_model(digits, cfg1)
    write_base_memory(net, digits)
    incremental_session(net, digits, digits.split[1])
    assert set(net.memory.keys.unique().tolist()) <= {-1.0, 0.0, 1.0}
    cfg_n = dataclasses.replace(method_config(tiny_cfg, "g2g"), nudging_iter=5, retrain_iter=0)
    net = build_model(digits, cfg_n)
    write_base_memory(net, digits)
    feats = net.memory.nodes.clone()
    incremental_session(net, digits, digits.split[1])
    assert not torch.equal(net.memory.nodes[:6], feats)  # nudged prototypes replace the written ones


def test_teen_calibration_hand_value():
    new = torch.tensor([[1.0, 0.0]])
    base = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    att = torch.softmax(torch.tensor([0.0, 16.0]), 0)
    mix = att[0] * torch.tensor([0.0, 1.0]) + att[1] * torch.tensor([1.0, 0.0])
    ref = 0.9 * torch.tensor([1.0, 0.0]) + 0.1 * mix / mix.norm()
    torch.testing.assert_close(teen_calibrate(new, base, 16.0, 0.1)[0], ref)


def test_run_fscil_all_methods_share_pretraining(digits, tiny_cfg):
    cfg = _exp(tiny_cfg)
    net = build_model(digits, tiny_cfg)
    pretrain(net, digits, 1, 0.05, 5, 128, "cpu", 0)
    state = net.state_dict()
    cache = {}
    for method in ("ncm", "teen", "v2v", "g2g"):
        rep, _ = run_fscil(digits, cfg, method, 0, pretrained=state, meta_cache=cache)
        assert len(rep.accs) == 3
        assert all(0 <= a <= 1 for a in rep.accs)
        m = rep.acc_matrix
        assert len(m) == 3 and m[0][1] is None and all(v is not None for v in m[2])
        assert rep.forgetting is not None and rep.forgetting >= -1
        if method in ("v2v", "g2g"):
            assert rep.extra["backbone_unchanged"]


def test_pretrain_and_metatrain_resume(digits, tiny_cfg, tmp_path):
    torch.manual_seed(0)
    net = build_model(digits, tiny_cfg)
    pretrain(net, digits, 1, 0.05, 5, 256, "cpu", 0, tmp_path / "p")
    assert (tmp_path / "p" / "latest.json").is_file()
    net2 = build_model(digits, tiny_cfg)
    losses = pretrain(net2, digits, 1, 0.05, 5, 256, "cpu", 0, tmp_path / "p", resume=True)
    assert len(losses) == 1  # nothing left to do: resumed at epoch 1
    for k, v in net.state_dict().items():
        assert torch.equal(net2.state_dict()[k], v), k
    start = {k: v.clone() for k, v in net.state_dict().items()}
    # three episodes straight == two episodes, a checkpoint, and a resumed third (same episodes: the
    # episode generator's state is checkpointed)
    h = metatrain(net, digits, 3, "cpu", torch.Generator().manual_seed(5))
    part = build_model(digits, tiny_cfg)
    part.load_state_dict(start)
    metatrain(part, digits, 2, "cpu", torch.Generator().manual_seed(5), tmp_path / "m", ckpt_every=1)
    resumed = build_model(digits, tiny_cfg)
    h2 = metatrain(resumed, digits, 3, "cpu", torch.Generator(), tmp_path / "m", ckpt_every=1, resume=True)
    assert len(h2["loss"]) == 3
    torch.testing.assert_close(torch.tensor(h2["loss"]), torch.tensor(h["loss"]))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, msg=k)


def test_augment_batch_shape_range_and_identity():
    x = torch.rand(5, 3, 8, 8)
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    same = augment_batch(x, torch.Generator().manual_seed(0), scale_min=1.0, hflip=False, jitter=0.0)
    # crop scale 1 with aspect jitter only resamples: close to the input in the centre
    assert (same - x).abs().mean() < 0.25
    with pytest.raises(ValueError, match="augment_batch"):
        augment_batch(torch.rand(3, 8, 8))


def test_metrics_on_hand_made_matrix():
    """PD, average accuracy, harmonic mean and forgetting (the shared metrics this package reports)."""
    from papers_shared.metrics import average_accuracy, forgetting, harmonic_mean, performance_drop

    accs = [0.9, 0.8, 0.6]
    assert performance_drop(accs) == pytest.approx(0.3)
    assert average_accuracy(accs) == pytest.approx(0.7666666, rel=1e-5)
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.8 * 0.4 / 1.2)
    assert harmonic_mean(0.8, 0.0) == 0.0
    m = [[0.9, None, None], [0.8, 0.7, None], [0.6, 0.5, 0.4]]
    # F = mean(max(0.9, 0.8) - 0.6, 0.7 - 0.5) = mean(0.3, 0.2) = 0.25
    assert forgetting(m) == pytest.approx(0.25)
