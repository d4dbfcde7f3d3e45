import pytest
import torch

from icl_vmf.baselines import system2_zero_shot
from icl_vmf.data import build_stream
from icl_vmf.encoders import prepare_encoder
from icl_vmf.learner import build_learner
from icl_vmf.losses import cl_vmf_loss
from icl_vmf.system2 import OracleSystem2
from icl_vmf.trainer import run_stream


@pytest.fixture(scope="module")
def stream():
    from icl_vmf.config import DataConfig

    return build_stream(
        DataConfig(dataset="digits", max_train_per_task=30, max_test_per_task=40, pretrain_epochs=1)
    )


def test_digits_stream_is_contiguous_and_disjoint(stream):
    assert stream.num_tasks == 5 and stream.classes_per_task == 2 and len(stream.class_names) == 10
    for t, (tr, te) in enumerate(zip(stream.train_sets, stream.test_sets)):
        assert set(tr.tensors[1].tolist()) == {2 * t, 2 * t + 1} == set(te.tensors[1].tolist())
        assert len(tr) == 30 and len(te) == 40
        assert (
            tr.tensors[0].shape[1:] == (3, 16, 16) and 0 <= tr.tensors[0].min() and tr.tensors[0].max() <= 1
        )
    px, py = stream.pretrain
    assert px.shape[0] == py.shape[0] > 300
    # the pre-training images are none of the stream's training images
    flat = torch.cat([t.tensors[0] for t in stream.train_sets]).flatten(1)
    assert not any(bool((flat == p.flatten()).all(1).any()) for p in px[:50])


def test_run_stream_resume_reproduces_an_uninterrupted_run(stream, tiny_config, tmp_path):
    cfg = tiny_config()
    device = torch.device("cpu")
    enc = prepare_encoder(cfg, stream, 0, device)
    full = run_stream(
        build_learner("icl", cfg, stream, enc, device, 0), stream, cfg, 0, checkpoint_dir=tmp_path / "a"
    )

    class Stop(Exception):
        pass

    learner = build_learner("icl", cfg, stream, enc, device, 0)
    orig = learner.begin_task

    def begin(t):
        if t == 3:
            raise Stop
        orig(t)

    learner.begin_task = begin
    with pytest.raises(Stop):
        run_stream(learner, stream, cfg, 0, checkpoint_dir=tmp_path / "b")
    resumed = run_stream(
        build_learner("icl", cfg, stream, enc, device, 0),
        stream,
        cfg,
        0,
        checkpoint_dir=tmp_path / "b",
        resume=True,
    )
    assert resumed.class_il == full.class_il and resumed.task_il == full.task_il
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    # frozen ViT weights are not in the checkpoint
    state = torch.load(next((tmp_path / "b").glob("ckpt-*.pt")), weights_only=True)
    assert not any(".vit." in f".{k}" for k in state["learner"]["module"])


def test_icl_run_metrics_and_system2_only_in_final_eval(stream, tiny_config):
    cfg = tiny_config()
    device = torch.device("cpu")
    enc = prepare_encoder(cfg, stream, 0, device)
    res = run_stream(build_learner("icl", cfg, stream, enc, device, 0), stream, cfg, 0, OracleSystem2(1.0))
    T = stream.num_tasks
    assert all(res.class_il[t][s] is not None for t in range(T) for s in range(t + 1))
    assert all(res.class_il[t][s] is None for t in range(T) for s in range(t + 1, T))
    assert all(0 <= res.class_il[t][s] <= res.task_il[t][s] + 1e-9 for t in range(T) for s in range(t + 1))
    assert res.system2 is not None and res.system2["routed"] == res.system2["hard"]
    assert len(res.odi) == T and all(o["routed"] == 0 for o in res.odi[:-1])
    assert res.final_average_with_system2 >= res.final_average  # a perfect oracle never harms
    s = res.summary()
    assert s["final_class_il"] == pytest.approx(sum(res.class_il[-1]) / T)


@pytest.mark.parametrize("method", ["linear", "er", "derpp", "vit_finetune_er"])
def test_baselines_train_only_their_parameters(stream, tiny_config, method):
    cfg = tiny_config(methods=[method])
    device = torch.device("cpu")
    enc = prepare_encoder(cfg, stream, 0, device)
    enc_before = [p.clone() for p in enc.parameters()]
    learner = build_learner(method, cfg, stream, enc, device, 0)
    head_before = learner.head.weight.clone()
    for t in range(2):
        learner.begin_task(t)
        x, y = stream.train_sets[t].tensors
        for i in range(3):
            learner.observe(x[i * 10 : (i + 1) * 10], y[i * 10 : (i + 1) * 10], i)
        learner.end_task(t)
    assert not torch.equal(head_before, learner.head.weight)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, enc.parameters()))  # shared encoder untouched
    moved = any(not torch.equal(a, b) for a, b in zip(enc_before, learner.encoder.parameters()))
    assert moved == (method == "vit_finetune_er")
    scores, ids = learner.scores(stream.test_sets[0].tensors[0][:5])
    assert scores.shape == (5, 4) and ids.tolist() == [0, 1, 2, 3]
    uses_buffer = method != "linear"
    assert (len(learner.buffer) > 0) == uses_buffer
    if method == "derpp":
        assert learner.buffer.logits is not None and learner.buffer.logits.shape[1] == 10


def test_system2_zero_shot_with_perfect_oracle(stream):
    out = system2_zero_shot(OracleSystem2(1.0), stream, batch_size=16, max_per_task=8)
    assert out["n"] == 40 and out["accuracy"] == 1.0 and out["parsed_fraction"] == 1.0
    bad = system2_zero_shot(OracleSystem2(0.0), stream, batch_size=16, max_per_task=8)
    assert bad["accuracy"] == 0.0


def _learner_with_replay(stream, cfg, method="icl"):
    enc = prepare_encoder(cfg, stream, 0, torch.device("cpu"))
    learner = build_learner(method, cfg, stream, enc, "cpu", 0)
    x, y = stream.train_sets[0].tensors
    learner.begin_task(0)
    learner.observe(x[:10], y[:10], 0)
    learner.end_task(0)
    learner.begin_task(1)
    return learner, stream.train_sets[1].tensors


@pytest.mark.parametrize("mix", [False, True])
def test_replay_matrix_official_vs_mixed(stream, tiny_config, mix):
    """Official: L(S_cur) + w L(S_buf) on two matrices; mixed: L on one matrix over [current, replay]."""
    cfg = tiny_config()
    cfg.loss.mix_replay, cfg.loss.replay_weight = mix, 0.7
    learner, (x, y) = _learner_with_replay(stream, cfg)
    xb, yb = x[:6], y[:6]
    state = learner.generator.get_state(), learner.buffer.generator.get_state()
    got = learner._loss(xb, yb, "both")
    # recompute by hand with the same random draws
    learner.generator.set_state(state[0])
    learner.buffer.generator.set_state(state[1])
    xa, ya = learner.with_second_view(xb, yb)
    xr, yr = learner.buffer.sample(cfg.train.minibatch_size, transform=learner.replay_view)
    xr, yr = learner.with_second_view(xr, yr)
    assert set(yr.tolist()) <= {0, 1} and set(ya.tolist()) == {2, 3}
    s1, lc = learner.system1, cfg.loss

    def L(xm, ym):
        return cl_vmf_loss(s1.set2set_logits(xm, ym), ym, lc.kappa, lc.lmbda, lc.delta, lc.gamma)

    if mix:
        want = L(torch.cat([xa, xr]), torch.cat([ya, yr]))
        S = s1.set2set_logits(torch.cat([xa, xr]), torch.cat([ya, yr]))
        assert S.shape == (len(ya) + len(yr),) * 2  # current rows see the old classes' keys
    else:
        want = L(xa, ya) + 0.7 * L(xr, yr)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_icl_variant_names_and_losses(stream, tiny_config):
    cfg = tiny_config()
    variants = {"v": {"kappa": 0.1, "mix_replay": True}}
    cfg = type(cfg)(**{**cfg.__dict__, "methods": ["icl", "v"], "icl_variants": variants})
    enc = prepare_encoder(cfg, stream, 0, torch.device("cpu"))
    v = build_learner("v", cfg, stream, enc, "cpu", 0)
    icl = build_learner("icl", cfg, stream, enc, "cpu", 0)
    assert v.name == "v" and v.loss_cfg.kappa == 0.1 and v.loss_cfg.mix_replay
    assert icl.loss_cfg.kappa == 1.0 and not icl.loss_cfg.mix_replay
    for a, b in zip(v.system1.parameters(), icl.system1.parameters()):  # same seed, same initialisation
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["icl", "er"])
def test_exported_weights_round_trip_through_safetensors(stream, tiny_config, tmp_path, method):
    from papers_shared.checkpoints import load_safetensors, save_safetensors

    cfg = tiny_config(methods=[method])
    enc = prepare_encoder(cfg, stream, 0, torch.device("cpu"))
    learner = build_learner(method, cfg, stream, enc, "cpu", 0)
    run_stream(learner, stream, cfg, 0)
    tensors, meta = learner.export_weights(seed=0)
    assert not any(".vit." in f".{k}" for k in tensors)
    save_safetensors(tensors, tmp_path / "w.safetensors", meta)
    fresh = build_learner(method, cfg, stream, enc, "cpu", 1)  # another initialisation
    fresh.import_weights(*load_safetensors(tmp_path / "w.safetensors"), source="w.safetensors")
    x = stream.test_sets[4].tensors[0][:16]
    s_a, ids_a = learner.scores(x)
    s_b, ids_b = fresh.scores(x)
    torch.testing.assert_close(s_a, s_b)
    assert ids_a.tolist() == ids_b.tolist() == list(range(10))


def test_global_batches_in_one_process_are_the_seeded_shuffle(stream):
    from icl_vmf.trainer import global_batches

    ds = stream.train_sets[0]
    got = list(global_batches(ds, 7, seed=11, epoch=2))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(13))
    x, y = ds.tensors
    assert [len(b[1]) for b in got] == [7, 7, 7, 7, 2]
    torch.testing.assert_close(torch.cat([b[0] for b in got]), x[order])
    assert torch.cat([b[1] for b in got]).tolist() == y[order].tolist()


@pytest.mark.slow
def test_parallel_runs_give_the_same_numbers(stream, tiny_config):
    from icl_vmf.experiment import run_experiment

    cfg = tiny_config(methods=["icl", "er"])
    cfg.system2.enabled = True
    one = run_experiment(cfg, data=stream, progress=False)
    two = run_experiment(type(cfg)(**{**cfg.__dict__, "parallel_runs": 2}), data=stream, progress=False)
    for a, b in zip(one["runs"], two["runs"]):
        assert (a["method"], a["class_il"], a["task_il"]) == (b["method"], b["class_il"], b["task_il"])
        assert a["final_class_il_with_system2"] == b["final_class_il_with_system2"]
