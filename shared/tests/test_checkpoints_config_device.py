import dataclasses
import os
from pathlib import Path
from typing import Literal

import pytest
import torch

from papers_shared import checkpoints as ck
from papers_shared.config import (
    Config,
    ConfigError,
    describe_config,
    field,
    load_config,
    parse_overrides,
    save_config,
)
from papers_shared.device import Timer, get_device, kernel_available, seed_everything, tensor_bytes, time_fn
from papers_shared.testing import CodeRunningPickle


def test_atomic_save_roundtrip(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3), "step": 3}
    p = ck.atomic_save(state, tmp_path / "a" / "s.pt")
    out = ck.load_checkpoint(p)
    assert torch.equal(out["w"], state["w"]) and out["step"] == 3
    assert not [f for f in os.listdir(tmp_path / "a") if f.endswith(".tmp")]


def test_atomic_save_survives_crash(tmp_path, monkeypatch):
    path = tmp_path / "s.pt"
    ck.atomic_save({"v": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("simulated crash while writing")

    with pytest.raises(RuntimeError, match="simulated crash"):
        ck.atomic_save({"v": 2, "bad": Boom()}, path)
    assert ck.load_checkpoint(path)["v"] == 1  # old file intact
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # temp cleaned


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ck.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match=r"could not read checkpoint .*bad\.pt: damaged") as err:
        ck.load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)
    good = ck.atomic_save({"w": torch.ones(3)}, tmp_path / "good.pt")
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ck.CheckpointError, match="trunc.pt: damaged"):
        ck.load_checkpoint(tmp_path / "trunc.pt")


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": CodeRunningPickle(target)}, tmp_path / "evil.pt")
    with pytest.raises(ck.CheckpointError, match=r"refused to load .*evil\.pt: .*could run code") as err:
        ck.load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(err.value)
    assert not target.exists()
    # the same file placed in a checkpoint folder: load_latest refuses it too (and runs nothing)
    (tmp_path / "c").mkdir()
    (tmp_path / "evil.pt").rename(tmp_path / "c" / "ckpt-000000001.pt")
    with pytest.raises(ck.CheckpointError, match="no checkpoint .* could be loaded"):
        ck.CheckpointManager(tmp_path / "c").load_latest()
    assert not target.exists()


def test_damaged_safetensors_is_one_line_error(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ck.CheckpointError, match=r"x\.safetensors: damaged"):
        ck.load_safetensors(tmp_path / "x.safetensors")


def test_load_latest_falls_back_past_a_damaged_checkpoint(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "c", keep=3)
    mgr.save(1, {"x": torch.tensor(1)})
    newest = mgr.save(2, {"x": torch.tensor(2)})
    newest.write_bytes(newest.read_bytes()[:100])  # torn write of another tool, disk error...
    with pytest.warns(RuntimeWarning, match=r"skipping damaged checkpoint .*ckpt-000000002\.pt"):
        state = mgr.load_latest()
    assert state["step"] == 1 and int(state["x"]) == 1


def test_atomic_write_fsyncs_the_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(
        ck.os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real(fd))
    )
    ck.atomic_write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the file, then its folder


def test_safetensors_roundtrip(tmp_path):
    t = {"a": torch.randn(3, 4).t(), "b": torch.tensor([1, 2], dtype=torch.int8)}
    ck.save_safetensors(t, tmp_path / "x.safetensors", metadata={"k": "v"})
    out, meta = ck.load_safetensors(tmp_path / "x.safetensors")
    assert torch.equal(out["a"], t["a"]) and out["b"].dtype == torch.int8 and meta == {"k": "v"}
    with pytest.raises(TypeError):
        ck.save_safetensors({"a": 1}, tmp_path / "y.safetensors")


def test_manager_keeps_latest_and_restores_rng(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "c", keep=2)
    assert mgr.load_latest() is None
    for step in (1, 2, 3):
        torch.manual_seed(step)
        mgr.save(step, {"x": torch.tensor(step)})
    assert sorted(p.name for p in (tmp_path / "c").glob("ckpt-*.pt")) == [
        "ckpt-000000002.pt",
        "ckpt-000000003.pt",
    ]
    expected = torch.rand(3)  # what follows the RNG state saved at step 3
    torch.manual_seed(999)
    state = mgr.load_latest()
    assert state["step"] == 3 and torch.equal(torch.rand(3), expected)


@dataclasses.dataclass
class Inner:
    lr: float = 0.1
    layers: list[int] = dataclasses.field(default_factory=lambda: [1, 2])


@dataclasses.dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    flag: bool = False
    mode: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_config_yaml_overrides_and_base(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\ninner:\n  lr: 0.5\n")
    (tmp_path / "c.yaml").write_text("_base_: base.yaml\nname: run\n")
    cfg = load_config(Cfg, tmp_path / "c.yaml", ["inner.layers=[3,4]", "flag=true", "steps=7"])
    assert cfg == Cfg(name="run", steps=7, flag=True, inner=Inner(lr=0.5, layers=[3, 4]))
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key.*stepz.*valid keys"):
        load_config(Cfg, overrides=["stepz=3"])
    with pytest.raises(ConfigError, match="inner.lrr"):
        load_config(Cfg, overrides=["inner.lrr=3"])
    with pytest.raises(ConfigError, match="expected an int"):
        load_config(Cfg, overrides=["steps=abc"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_device_and_seed():
    assert get_device("cpu").type == "cpu"
    assert get_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            get_device("cuda")
    seed_everything(3)
    a = torch.rand(2)
    seed_everything(3)
    assert torch.equal(a, torch.rand(2))
    with pytest.raises(ValueError):
        seed_everything(-1)
    with pytest.raises(ValueError):
        kernel_available("flash")
    with Timer("cpu") as t:
        sum(range(1000))
    assert t.seconds >= 0
    assert len(time_fn(lambda: None, repeats=3)) == 3
    assert tensor_bytes(torch.nn.Linear(3, 2)) == (6 + 2) * 4


def test_paths_are_pathlike(tmp_path):
    assert isinstance(ck.atomic_write_text(tmp_path / "t.txt", "hi"), Path)


@dataclasses.dataclass
class Validated:
    rate: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {self.rate}")


def test_config_validation_errors_become_config_errors(tmp_path):
    assert load_config(Validated, None, ["rate=0.25"]).rate == 0.25
    with pytest.raises(ConfigError, match=r"Validated: rate must lie in \[0, 1\], got 2.0"):
        load_config(Validated, None, ["rate=2.0"])


@dataclasses.dataclass
class Attack(Config):
    eps: float = field(16 / 255, help="L-inf budget in [0, 1] pixel units", ge=0, le=1)
    steps: int = field(10, help="iterations", ge=1)
    norm: Literal["linf", "l2"] = "linf"
    clip: float = field(float("inf"), finite=False, help="may be infinite")


@dataclasses.dataclass
class Outer(Config):
    name: str = field("run", help="run name", choices=("run", "debug"))
    attack: Attack = dataclasses.field(default_factory=Attack)
    lrs: list[float] = field(default_factory=lambda: [0.1], gt=0)
    base: int = 2
    total: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base >= self.total:
            raise ConfigError(f"base={self.base} must be < total={self.total}")


def test_config_fields_are_validated_when_built():
    assert Outer().attack.eps == 16 / 255
    with pytest.raises(ConfigError, match=r"^eps=5\.0: must be <= 1 \(L-inf budget"):
        Attack(eps=5.0)  # plain Python construction is checked too
    with pytest.raises(ConfigError, match=r"^attack\.eps=-1\.0: must be >= 0"):
        load_config(Outer, None, ["attack.eps=-1"])
    with pytest.raises(ConfigError, match=r"attack\.eps=nan: must be a finite number"):
        load_config(Outer, None, ["attack.eps=.nan"])
    assert load_config(Outer, None, ["attack.clip=.inf"]).attack.clip == float("inf")
    with pytest.raises(ConfigError, match=r"^attack\.norm='l3' is not one of \['linf', 'l2'\]"):
        load_config(Outer, None, ["attack.norm=l3"])
    with pytest.raises(ConfigError, match=r"^attack\.steps=0: must be >= 1"):
        load_config(Outer, None, ["attack.steps=0"])
    with pytest.raises(ConfigError, match=r"^name='x' is not one of"):
        Outer(name="x")
    with pytest.raises(ConfigError, match=r"lrs=\[0\.1, -2\.0\]: must be > 0"):
        load_config(Outer, None, ["lrs=[0.1,-2]"])
    with pytest.raises(ConfigError, match=r"^Outer: base=7 must be < total=5"):
        load_config(Outer, None, ["base=7"])


def test_plain_dataclasses_get_literal_checks_through_load_config():
    with pytest.raises(ConfigError, match="not one of"):
        load_config(Plain, None, ["mode=c"])
    assert load_config(Plain, None, ["mode=b"]).mode == "b"


@dataclasses.dataclass
class Plain:
    mode: Literal["a", "b"] = "a"


def test_describe_config_lists_help_defaults_and_rules():
    text = "\n".join(describe_config(Outer))
    assert "attack.eps: float = 0.06274509803921569  L-inf budget in [0, 1] pixel units  [>= 0, <= 1]" in text
    assert "name: str = 'run'  run name  [one of ['run', 'debug']]" in text
    assert "attack.steps: int = 10  iterations  [>= 1]" in text
