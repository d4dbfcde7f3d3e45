"""Every loader of a user-given file refuses a crafted pickle (and runs nothing) or a damaged file, with a
one-line :class:`CheckpointError` naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofs_dpo.adapters import read_adapter_folder
from ofs_dpo.cofs import ContinualRunner
from ofs_dpo.data import tiny_gpt2
from ofs_dpo.trainer import OFS_STATE_NAME
from papers_shared.checkpoints import save_safetensors
from papers_shared.errors import CheckpointError
from papers_shared.testing import CodeRunningPickle


def _evil(path: Path, target: Path) -> Path:
    torch.save({"lora_A.weight": torch.zeros(1), "x": CodeRunningPickle(target)}, path)
    return path


def _one_line(err: pytest.ExceptionInfo, name: str) -> None:
    assert name in str(err.value) and "\n" not in str(err.value)


def test_runner_state_refuses_a_crafted_pickle(tmp_path, tok, h):
    target = tmp_path / "pwned"
    path = _evil(tmp_path / "runner.pt", target)
    args = h.small_args(tmp_path, max_steps=1)
    runner = ContinualRunner(tiny_gpt2(len(tok), seed=0), tok, h.lora_config(4), args, method="cofs")
    with pytest.raises(CheckpointError, match="refused to load") as err:
        runner.load(path)
    _one_line(err, "runner.pt")
    assert not target.exists()
    torch.save({"unrelated": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a runner state"):
        runner.load(tmp_path / "other.pt")


def test_adapter_folder_refuses_pickles_and_damage(tmp_path, make_trainer):
    folder = make_trainer().export_leader(tmp_path / "leader")
    config, state = read_adapter_folder(folder)
    assert config.r == 4 and state and all(isinstance(v, torch.Tensor) for v in state.values())
    target = tmp_path / "pwned"
    (folder / "adapter_model.safetensors").unlink()
    _evil(folder / "adapter_model.bin", target)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        read_adapter_folder(folder)
    _one_line(err, "adapter_model.bin")
    assert not target.exists()
    # a pickle under the safetensors name is not unpickled at all
    (folder / "adapter_model.bin").rename(folder / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="damaged") as err:
        read_adapter_folder(folder)
    _one_line(err, "adapter_model.safetensors")
    assert not target.exists()
    # the weights file given directly (config beside it): refused the same way
    _evil(tmp_path / "evil.pt", target)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        read_adapter_folder(tmp_path / "evil.pt")
    _one_line(err, "evil.pt")
    assert not target.exists()
    save_safetensors(state, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text('{"r": 4,,}')
    with pytest.raises(CheckpointError) as err:
        read_adapter_folder(folder)
    _one_line(err, "adapter_config.json")


def test_trainer_resume_refuses_pickles_and_a_damaged_state(tmp_path, make_trainer):
    tr = make_trainer(max_steps=1)
    tr.save_model(str(tmp_path / "ckpt"))
    ckpt = tmp_path / "ckpt"
    tr._load_from_checkpoint(str(ckpt))  # round trip works
    target = tmp_path / "pwned"
    _evil(ckpt / "slow" / "adapter_model.safetensors", target)
    with pytest.raises(CheckpointError, match="damaged") as err:
        tr._load_from_checkpoint(str(ckpt))
    _one_line(err, "adapter_model.safetensors")
    assert not target.exists()
    (ckpt / OFS_STATE_NAME).write_text('{"leader": "fast",,')
    with pytest.raises(CheckpointError) as err:
        tr.load_ofs_state(ckpt)
    _one_line(err, OFS_STATE_NAME)
    (ckpt / OFS_STATE_NAME).write_text('{"leader": "middle"}')
    with pytest.raises(CheckpointError, match="leader"):
        tr.load_ofs_state(ckpt)
