"""Every file mecoin reads back: the pre-training cache, the session checkpoints and the Mecoin memory.

A crafted pickle that would create a file is refused with a one-line error naming the file (and the
file is not created); a damaged pre-training cache is rebuilt with a warning naming it.
"""

from pathlib import Path

import pytest
import torch

from mecoin import build_method, build_task, load_mecoin, pretrain_task, run_method, save_mecoin
from mecoin.cli import main
from mecoin.trainer import cache_path
from papers_shared.checkpoints import save_safetensors
from papers_shared.errors import CheckpointError
from papers_shared.testing import CodeRunningPickle


def _evil_file(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(1), "x": CodeRunningPickle(target)}, path)
    return path


def test_damaged_pretrain_cache_is_rebuilt_with_a_warning(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    task = build_task(cfg, 0)
    first = pretrain_task(task, cfg, 0, torch.device("cpu"), cache_dir=tmp_path)
    path = cache_path(tmp_path, cfg, 0)
    assert path.is_file()
    again = pretrain_task(task, cfg, 0, torch.device("cpu"), cache_dir=tmp_path)  # from the cache
    for a, b in zip(first.encoder.state_dict().values(), again.encoder.state_dict().values()):
        assert torch.equal(a, b)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.warns(RuntimeWarning, match=f"rebuilding the pre-training cache: .*{path.name}"):
        rebuilt = pretrain_task(task, cfg, 0, torch.device("cpu"), cache_dir=tmp_path)
    for a, b in zip(first.encoder.state_dict().values(), rebuilt.encoder.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same encoder
    # the rebuilt cache loads again without a warning
    pretrain_task(task, cfg, 0, torch.device("cpu"), cache_dir=tmp_path)


def test_crafted_pickle_as_pretrain_cache_runs_nothing(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    task = build_task(cfg, 0)
    target = tmp_path / "pwned"
    _evil_file(cache_path(tmp_path, cfg, 0), target)
    with pytest.warns(RuntimeWarning, match="rebuilding the pre-training cache"):
        pretrain_task(task, cfg, 0, torch.device("cpu"), cache_dir=tmp_path)
    assert not target.exists()


def test_crafted_session_checkpoint_is_refused_on_resume(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    task = build_task(cfg, 0)
    pre = pretrain_task(task, cfg, 0, torch.device("cpu"))
    target = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    _evil_file(ckpt / "ckpt-000000001.pt", target)
    with pytest.raises(CheckpointError, match="no checkpoint .* could be loaded") as err:
        with pytest.warns(RuntimeWarning, match=r"ckpt-000000001\.pt"):
            run_method(task, pre, cfg, build_method("mecoin", cfg, 0), 0, checkpoint_dir=ckpt, resume=True)
    assert "\n" not in str(err.value)
    assert not target.exists()


def _trained_memory(cfg, tmp_path) -> Path:
    task = build_task(cfg, 0)
    pre = pretrain_task(task, cfg, 0, torch.device("cpu"))
    method = build_method("mecoin", cfg, 0)
    run_method(task, pre, cfg, method, 0)
    return save_mecoin(method.model, tmp_path / "m.safetensors", cfg.encoder, {"seed": 0}), method


def test_memory_round_trip_is_exact(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    path, method = _trained_memory(cfg, tmp_path)
    model, meta = load_mecoin(path)
    assert meta["seed"] == 0 and meta["num_classes"] == method.model.num_classes
    for (k, a), (k2, b) in zip(method.model.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a.cpu(), b)
    h = torch.randn(7, method.model.hidden)
    method.model.eval()
    torch.testing.assert_close(
        model.forward_embeddings(h).logits_mram, method.model.forward_embeddings(h).logits_mram
    )


def test_damaged_or_foreign_memory_is_one_line_error(tiny_experiment, tmp_path):
    cfg = tiny_experiment()
    path, _ = _trained_memory(cfg, tmp_path)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        load_mecoin(cut)
    other = save_safetensors({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"other\.safetensors is not a Mecoin memory"):
        load_mecoin(other)


def test_crafted_pickle_as_memory_through_the_cli(tmp_path, capsys):
    target = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.safetensors", target)
    assert main(["eval", "--weights", str(evil)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "evil.safetensors" in err
    assert not target.exists()
    assert main(["eval", "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
