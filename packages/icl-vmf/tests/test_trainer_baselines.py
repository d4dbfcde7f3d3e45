import pytest
import torch

from icl_vmf.baselines import build_learner, system2_zero_shot
from icl_vmf.data import build_stream
from icl_vmf.experiment import prepare_encoder
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
    state = torch.load(next((tmp_path / "b").glob("ckpt-*.pt")), weights_only=False)
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
