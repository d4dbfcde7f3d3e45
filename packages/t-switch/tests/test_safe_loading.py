"""Every loader of the package refuses a crafted pickle (which would create a file) with a one-line
CheckpointError naming the file, and the file is not created; damaged caches are rebuilt with a warning."""

import pytest
import torch
from torch import nn

from papers_shared.errors import CheckpointError
from papers_shared.testing import CodeRunningPickle
from t_switch import (
    BinarySwitch,
    load_switches,
    load_task_vector,
    save_switches,
    save_task_vector,
    task_vector,
)
from t_switch.config import LoraTrainConfig
from t_switch.data import load_state
from t_switch.trainer import train_lora


@pytest.fixture
def evil(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": CodeRunningPickle(target)}, path)
    return path, target


def _refused(exc_info, name: str) -> None:
    msg = str(exc_info.value)
    assert name in msg and "\n" not in msg, msg


def test_load_state_refuses_pickle(evil):
    path, target = evil
    with pytest.raises(CheckpointError, match="refused to load") as err:
        load_state(str(path))
    _refused(err, "evil.pt")
    assert not target.exists()


def test_load_state_reads_tensors_and_rejects_other_objects(tmp_path, tiny):
    pre, _ = tiny
    torch.save({"state_dict": pre.state_dict()}, tmp_path / "nested.pt")
    assert set(load_state(str(tmp_path / "nested.pt"))) == set(pre.state_dict())
    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(Exception, match="not tensors"):
        load_state(str(tmp_path / "mixed.pt"))


@pytest.mark.parametrize("loader", [load_switches, load_task_vector])
def test_safetensors_loaders_refuse_pickles_and_damage(tmp_path, evil, loader):
    path, target = evil
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError) as err:
        loader(disguised)
    _refused(err, "evil.safetensors")
    assert not target.exists()
    (tmp_path / "cut.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError) as err:
        loader(tmp_path / "cut.safetensors")
    _refused(err, "cut.safetensors")


def test_task_vector_round_trip_and_foreign_file(tmp_path, tiny):
    pre, fts = tiny
    tv = task_vector(pre, fts["t0"])
    save_task_vector(tmp_path / "tv.safetensors", tv, {"task": "t0", "drop_ratio": 0.0})
    back, meta = load_task_vector(tmp_path / "tv.safetensors")
    assert meta == {"task": "t0", "drop_ratio": 0.0}
    assert all(torch.equal(back[n], tv[n]) for n in tv)
    sw = BinarySwitch.from_task_vector(tv, 0.5)
    save_switches(tmp_path / "sw.safetensors", {"t0": sw})
    with pytest.raises(CheckpointError, match="not a t-switch task-vector file"):
        load_task_vector(tmp_path / "sw.safetensors")
    with pytest.raises(CheckpointError, match="not a t-switch switch file"):
        load_switches(tmp_path / "tv.safetensors")


class _LoraToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))


def _peft(seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(_LoraToy(), LoraConfig(r=2, lora_alpha=4, target_modules=["fc1"], lora_dropout=0.0))


def _batches(epoch):
    g = torch.Generator().manual_seed(epoch)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_lora_trainer_resumes_refuses_pickles_and_rebuilds_damaged_cache(tmp_path, evil):
    cfg = LoraTrainConfig(rank=2, alpha=4, lr=1e-2, epochs=2, step_size=1)
    head = {}
    full = _lora(train_lora(_peft(), head, _batches, cfg, tmp_path / "full", progress=False))
    # interrupted after epoch 1: drop the cache and the last checkpoint, resume from epoch 0's
    part = tmp_path / "part"
    train_lora(_peft(), head, _batches, cfg, part, progress=False)
    (part / "done.safetensors").unlink()
    sorted((part / "ckpt").glob("ckpt-*.pt"))[-1].unlink()
    resumed = _lora(train_lora(_peft(), head, _batches, cfg, part, progress=False))
    assert all(torch.allclose(resumed[n], full[n]) for n in full)
    # a damaged cache is rebuilt (from the checkpoints), with a warning naming it
    (part / "done.safetensors").write_bytes(b"damaged")
    with pytest.warns(RuntimeWarning, match="done.safetensors"):
        again = _lora(train_lora(_peft(), head, _batches, cfg, part, progress=False))
    assert all(torch.allclose(again[n], full[n]) for n in full)
    # a crafted pickle as the only checkpoint is refused and runs nothing
    path, target = evil
    bad = tmp_path / "bad"
    (bad / "ckpt").mkdir(parents=True)
    path.rename(bad / "ckpt" / "ckpt-000000000.pt")
    with pytest.raises(CheckpointError, match="could be loaded"), pytest.warns(RuntimeWarning):
        train_lora(_peft(), head, _batches, cfg, bad, progress=False)
    assert not target.exists()
