"""Data loaders: synthetic non-uniform sampling, WikiText windows, LRA parsing and clear errors."""

import numpy as np
import pytest
import torch

from papers_shared.data import DatasetNotFoundError
from smr_ssm.data import (
    LRA_TASKS,
    ByteTokenizer,
    LMWindows,
    grid_task,
    load_lm_tokens,
    load_lra,
    observed_steps_task,
    regression_batch,
    sample_signals,
    sampling_steps,
)
from smr_ssm.data.lra import LISTOPS_VOCAB, listops_tokens
from smr_ssm.data.nonuniform import next_step_floor, regime_steps


def test_sampling_grids():
    uni = sampling_steps(2, 50, "uniform", base_step=0.02)
    assert torch.all(uni == 0.02)
    scaled = sampling_steps(2, 50, "scaled", base_step=0.02, scale=1.5)
    assert torch.allclose(scaled, torch.full_like(scaled, 0.03))
    jit = sampling_steps(
        4, 500, "jitter", base_step=0.02, jitter=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert jit.min() >= 0.01 and jit.max() <= 0.03 and jit.std() > 1e-3
    with pytest.raises(ValueError, match="grid"):
        sampling_steps(1, 5, "random")
    with pytest.raises(ValueError, match="jitter"):
        sampling_steps(1, 5, "jitter", jitter=1.5)


def test_sample_signals_is_a_sum_of_sines_and_deterministic():
    v, t = sample_signals(3, 40, "jitter", seed=5)
    v2, t2 = sample_signals(3, 40, "jitter", seed=5)
    assert torch.equal(v, v2) and torch.equal(t, t2)
    assert v.shape == (3, 40, 1) and t.shape == (3, 40) and torch.all(t[:, 0] == 0)
    assert torch.all(torch.diff(t, dim=1) > 0)
    assert v.abs().max() <= 3.0  # three components of amplitude <= 1
    batch = regression_batch(v, t, 0.02, with_timesteps=True)
    assert torch.equal(batch["labels"], v[:, 1:]) and torch.equal(batch["input_values"], v[:, :-1])
    steps = torch.diff(t, dim=1) / 0.02
    assert torch.allclose(batch["timesteps"][:, 1:].double(), steps[:, :-1], atol=1e-6)


def test_regime_steps_are_piecewise_constant():
    tau = regime_steps(50, 40, (0.5, 1.5), regimes=3, generator=torch.Generator().manual_seed(0))
    changes = (torch.diff(tau, dim=1) != 0).sum(1)
    assert tau.min() >= 0.5 and tau.max() <= 1.5 and (changes <= 2).all() and changes.float().mean() > 1.5
    one = regime_steps(4, 10, (1.0, 2.0), regimes=1)
    assert (one == one[:, :1]).all()


def test_observed_steps_task_inputs_targets_and_floor():
    task = observed_steps_task(64, 30, (0.5, 1.5), base_step=0.02, regimes=2, horizon=1.0, noise=0.03, seed=3)
    assert (
        task.inputs.shape == (64, 30, 2) and task.labels.shape == (64, 30, 1) and task.steps.shape == (64, 30)
    )
    assert torch.equal(task.inputs[..., 1], task.steps)  # the observed gap is the true relative step
    assert 0.03**2 * 0.7 < task.floor < 0.03**2 * 1.3  # the oracle's error is the target noise
    assert task.hold > 10 * task.floor
    clean = observed_steps_task(8, 30, (1.0, 1.0), base_step=0.02, horizon=1.0, noise=0.0, seed=4)
    # with a constant unit step and horizon 1, the target is the next input (no noise, floor 0)
    assert clean.floor == 0.0 and torch.allclose(clean.labels[:, :-1, 0], clean.inputs[:, 1:, 0], atol=1e-6)
    again = observed_steps_task(
        64, 30, (0.5, 1.5), base_step=0.02, regimes=2, horizon=1.0, noise=0.03, seed=3
    )
    assert torch.equal(again.inputs, task.inputs) and torch.equal(again.labels, task.labels)


def test_next_step_floor_is_the_variance_over_the_unknown_step():
    _, times, bank = sample_signals(4, 21, "jitter", jitter=0.5, seed=1, return_bank=True)
    floor = next_step_floor(bank, times, 0.01, 0.03)
    assert floor.shape == (4, 20) and (floor >= 0).all() and floor.mean() > 1e-5
    assert next_step_floor(bank, times, 0.02, 0.02).abs().max() == 0
    uniform = grid_task(4, 20, "uniform", 0.02, seed=1)
    jitter = grid_task(4, 20, "jitter", 0.02, jitter=0.5, seed=1)
    assert uniform.floor == 0.0 and jitter.floor > 0 and uniform.inputs.shape == (4, 20, 1)


def test_byte_tokenizer_and_lm_windows():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("héllo")) == "héllo"
    tokens = torch.arange(1000) % 257
    w = LMWindows(tokens, context=16, seed=3)
    b1, b2 = w.batch(7, 4), w.batch(7, 4)
    assert torch.equal(b1["input_ids"], b2["input_ids"]) and b1["input_ids"].shape == (4, 16)
    assert not torch.equal(w.batch(8, 4)["input_ids"], b1["input_ids"])
    batches = list(w.eval_batches(batch_size=8, stride=8))
    first, second = batches[0]["labels"][0], batches[0]["labels"][1]
    assert (first != -100).all() and (second[:8] == -100).all() and (second[8:] != -100).all()
    with pytest.raises(ValueError, match="context"):
        LMWindows(torch.arange(10), context=16)
    # two processes take the interleaved rows of the same global batch
    halves = [w.batch(7, 4, rank=r, world=2)["input_ids"] for r in (0, 1)]
    assert torch.equal(halves[0], b1["input_ids"][0::2]) and torch.equal(halves[1], b1["input_ids"][1::2])


def test_lm_tokens_from_raw_files(tmp_path):
    for split, name in (
        ("train", "wiki.train.raw"),
        ("validation", "wiki.valid.raw"),
        ("test", "wiki.test.raw"),
    ):
        (tmp_path / name).write_text(f" = {split} = \n some text for {split} .\n" * 20)
    toks, vocab = load_lm_tokens(tokenizer="byte", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert vocab == 257 and set(toks) == {"train", "validation", "test"}
    assert ByteTokenizer().decode(toks["test"][:9].tolist()) == " = test ="
    assert any((tmp_path / "cache").iterdir())
    with pytest.raises(DatasetNotFoundError, match="wiki.train.raw"):
        load_lm_tokens(tokenizer="byte", data_dir=str(tmp_path / "missing"))


def test_damaged_or_crafted_caches_are_rebuilt_with_a_warning(tmp_path, evil_file):
    for split, name in (
        ("train", "wiki.train.raw"),
        ("validation", "wiki.valid.raw"),
        ("test", "wiki.test.raw"),
    ):
        (tmp_path / name).write_text(f" = {split} = \n some text for {split} .\n" * 20)
    kw = dict(tokenizer="byte", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    toks, _ = load_lm_tokens(**kw)
    caches = sorted((tmp_path / "cache").iterdir())
    target = evil_file(caches[0])
    caches[1].write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="rebuilding the cache"):
        again, _ = load_lm_tokens(**kw)
    assert not target.exists() and all(torch.equal(toks[k], again[k]) for k in toks)
    _fake_lra(tmp_path / "lra")
    first = load_lra("retrieval", tmp_path / "lra", "val")
    (cache,) = (tmp_path / "lra" / "cache").iterdir()
    evil_file(cache)
    with pytest.warns(RuntimeWarning, match="rebuilding the cache"):
        assert torch.equal(load_lra("retrieval", tmp_path / "lra", "val").inputs, first.inputs)
    assert not target.exists()


def _fake_lra(root):
    lo = root / "listops-1000"
    lo.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = [
            "Source\tTarget",
            "( ( [MAX 2 9 ] ) 3 )\t9",
            "( [SM 1 2 ] )\t3",
            "[MIN 4 ( [MED 1 7 2 ] ) ]\t2",
        ]
        (lo / f"basic_{split}.tsv").write_text("\n".join(rows) + "\n")
    tsv = root / "tsv_data"
    tsv.mkdir()
    for split in ("train", "eval", "test"):
        (tsv / f"new_aan_pairs.{split}.tsv").write_text(
            "1\tid1\tid2\tpaper one\tpaper two\n0\tid3\tid4\tabc\tdefg\n"
        )
    from PIL import Image

    base = root / "pathfinder32" / "curv_contour_length_14"
    (base / "imgs" / "0").mkdir(parents=True)
    (base / "metadata").mkdir()
    lines = []
    for i in range(10):
        arr = (np.arange(32 * 32).reshape(32, 32) * (i + 1) % 256).astype(np.uint8)
        Image.fromarray(arr).save(base / "imgs" / "0" / f"sample_{i}.png")
        lines.append(f"imgs/0 sample_{i}.png 0 {i % 2} 14")
    (base / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")


def test_lra_parsers_on_release_layout(tmp_path):
    _fake_lra(tmp_path)
    lo = load_lra("listops", tmp_path, "train", cache=False)
    assert len(lo) == 3 and lo.labels.tolist() == [9, 3, 2]
    assert lo.inputs.max() < LRA_TASKS["listops"]["vocab_size"] == len(LISTOPS_VOCAB)
    assert listops_tokens("( [MAX 2 ] )") == [
        LISTOPS_VOCAB.index("[MAX"),
        LISTOPS_VOCAB.index("2"),
        LISTOPS_VOCAB.index("X"),
        2,
    ]
    assert lo.mask[0].sum() == len(listops_tokens("( ( [MAX 2 9 ] ) 3 )"))
    rt = load_lra("retrieval", tmp_path, "val", cache=True)
    assert rt.inputs.shape[:2] == (2, 2) and rt.labels.tolist() == [1, 0]
    assert rt.batch(torch.tensor([0]))["input_ids"].shape[1] == 2
    assert (tmp_path / "cache").is_dir()
    assert torch.equal(load_lra("retrieval", tmp_path, "val").inputs, rt.inputs)  # from the cache
    pf = [load_lra("pathfinder", tmp_path, s, cache=False) for s in ("train", "val", "test")]
    assert [len(p) for p in pf] == [8, 1, 1]
    assert pf[0].inputs.shape[1:] == (1024, 1) and pf[0].inputs.min() >= -1 and pf[0].inputs.max() <= 1


def test_lra_missing_data_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="lra_release"):
        load_lra("listops", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="basic_train.tsv"):
        load_lra("listops", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="pathfinder128"):
        load_lra("pathx", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):  # LRA Image reads CIFAR-10
        load_lra("image", tmp_path / "nowhere", split="test")
    with pytest.raises(ValueError, match="unknown LRA task"):
        load_lra("sudoku", tmp_path)
