"""All ten CLIs keep one contract (papers_shared.cli): the built-in commands, and bad input -> exit 2 with
one line on stderr, Ctrl-C -> exit 130 within 5 s with no partial result file.

The bad inputs, per package: an unknown config key; a missing dataset (or hub weights); a damaged
checkpoint and a crafted pickle that would create a file (refused, the file is not created); `--out`
pointing at an existing file; and, for ibta, a malformed input table.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _workspace import PACKAGE_DIRS

from papers_shared.testing import CodeRunningPickle, interruptible

IDS = [p.name for p in PACKAGE_DIRS]
IMPORT = {p.name: p.name.replace("-", "_") for p in PACKAGE_DIRS}

#: per package: argv (after the CLI name) of a command that reads a checkpoint given by path ({ckpt}),
#: and of a command that needs a dataset, pointed at a missing local folder ({missing}).
CHECKPOINT_ARGV: dict[str, list[str]] = {
    "esma": ["eval", "--config", "digits_tiny", "--checkpoint", "{ckpt}"],
    "g2g-fscil": ["eval", "--config", "quick", "--checkpoint", "{ckpt}"],
    "mecoin": ["eval", "--config", "quick", "--weights", "{ckpt}"],
    "fsg-bnn": ["eval", "--config", "smoke", "--checkpoint", "{ckpt}"],
    "ofs-dpo": ["eval", "--config", "quick_in_domain", "--adapter", "{ckpt}"],
    "smr-ssm": ["lm", "--config", "lm_demo", "--init", "{ckpt}"],
    "ibta": ["attack", "--config", "digits_tiny", 'weights={"digits_cnn": "{ckpt}"}', "--out", "{out}"],
    "icl-vmf": ["eval", "--config", "smoke_digits", "--checkpoint", "{ckpt}"],
    "sr-cis": ["eval", "--config", "digits_smoke", "--state", "{ckpt}"],
    "t-switch": ["report", "{ckpt}"],
}
DATASET_ARGV: dict[str, list[str]] = {
    "esma": ["screen", "--config", "esma_resnet50", "imagenet_root={missing}", "--out", "{out}"],
    "g2g-fscil": ["run", "--config", "cifar100", "data_root={missing}", "--out", "{out}"],
    "mecoin": ["run", "--config", "corafull", "data_root={missing}", "--out", "{out}"],
    "fsg-bnn": ["train", "--config", "cifar10_resnet20", "data.root={missing}", "--out", "{out}"],
    "ofs-dpo": ["run", "--config", "in_domain_tldr", "model.name_or_path={missing}"],
    "smr-ssm": ["lra", "--config", "lra_listops_demo", "--data-dir", "{missing}"],
    "ibta": ["attack", "--config", "exp1_cnn", "data_root={missing}", "--out", "{out}"],
    "icl-vmf": ["zero-shot", "--config", "zero_shot_cifar100_llava15_7b", "data.root={missing}"],
    "sr-cis": ["train", "--config", "cifar100_10t", "data.root={missing}", "--out", "{out}"],
    "t-switch": ["run", "--config", "vit_b32", "pretrained={missing}", "--out", "{out}"],
}


def _main(pkg: str):
    return importlib.import_module(f"{IMPORT[pkg]}.cli").main


def _fill(argv: list[str], **paths: Path) -> list[str]:
    out = []
    for a in argv:
        for key, path in paths.items():
            a = a.replace("{" + key + "}", str(path))
        out.append(a)
    return out


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Each call runs from an empty working directory, which must stay empty after a refused command."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    left = sorted(p.name for p in cwd.iterdir())
    assert not left, f"a refused command left files in the working directory: {left}"


def _run(pkg: str, argv: list[str], capsys) -> tuple[int, str, str]:
    code = _main(pkg)(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, f"exit {code}, stderr: {err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("pkg", IDS)
def test_builtin_commands_exist(pkg, capsys):
    with pytest.raises(SystemExit) as done:
        _main(pkg)(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in ("quick", "show-config", "list-configs"):
        assert command in text, f"{pkg} --help does not list {command}"
    code, out, _ = _run(pkg, ["list-configs"], capsys)
    configs = (Path(PACKAGE_DIRS[IDS.index(pkg)]) / "configs").glob("*.yaml")
    # a name starting with "_" is a base file other configs include, not a table: not listed
    shipped = sorted(p.stem for p in configs if not p.stem.startswith("_"))
    assert code == 0 and [ln.split()[0] for ln in out.splitlines() if ln.strip()] == shipped


@pytest.mark.parametrize("pkg", IDS)
def test_unknown_key_is_one_line(pkg, capsys):
    code, _, err = _run(pkg, ["show-config", "no_such_key_xyz=1"], capsys)
    _one_line_error(code, err, "no_such_key_xyz")


@pytest.mark.parametrize("pkg", IDS)
def test_out_that_is_a_file_is_refused_before_work(pkg, capsys, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    code, _, err = _run(pkg, ["quick", "--out", str(target)], capsys)
    _one_line_error(code, err, str(target), "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("pkg", IDS)
def test_damaged_and_crafted_checkpoints_are_one_line(pkg, capsys, tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"\x80\x02not really a checkpoint" * 10)
    code, _, err = _run(pkg, _fill(CHECKPOINT_ARGV[pkg], ckpt=damaged, out=tmp_path / "o1"), capsys)
    _one_line_error(code, err, str(damaged))
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"state": torch.zeros(1), "x": CodeRunningPickle(marker)}, crafted)
    code, _, err = _run(pkg, _fill(CHECKPOINT_ARGV[pkg], ckpt=crafted, out=tmp_path / "o2"), capsys)
    _one_line_error(code, err, str(crafted))
    assert not marker.exists(), "loading the crafted file ran code"


@pytest.mark.parametrize("pkg", IDS)
def test_missing_dataset_is_one_line(pkg, capsys, tmp_path):
    missing = tmp_path / "no_such_data"
    code, _, err = _run(pkg, _fill(DATASET_ARGV[pkg], missing=missing, out=tmp_path / "o"), capsys)
    _one_line_error(code, err, str(missing))
    assert not missing.exists(), "the missing folder was created (a download attempt?)"


def test_ibta_eval_rejects_a_malformed_table(capsys, tmp_path):
    table = tmp_path / "results.csv"
    table.write_text("attack,source,victim,success\nMI,resnet,vgg,not_a_number\n")
    code, _, err = _run("ibta", ["eval", "--csv", str(table)], capsys)
    _one_line_error(code, err, str(table))


@pytest.mark.slow
@pytest.mark.parametrize("pkg", IDS)
def test_ctrl_c_exits_130_promptly_without_partial_results(pkg, tmp_path):
    exe = Path(sys.executable).with_name(pkg)
    out = tmp_path / "quick"
    proc = subprocess.Popen(
        [str(exe), "quick", "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,  # Ctrl-C reaches the child even when pytest runs in a background job
    )
    deadline = time.monotonic() + 120
    started = False
    while time.monotonic() < deadline and proc.poll() is None:  # wait until the run itself has begun
        line = proc.stdout.readline()
        if line.startswith(f"[reproduce] {pkg} ..."):
            started = True
            break
    assert started, "the quick run did not start"
    time.sleep(3.0)  # inside the run (imports done, work under way)
    assert proc.poll() is None, "the quick run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    waited = time.monotonic() - t0
    # a worker process that outlived the CLI would hold the pipes open: time out instead of hanging
    _, err = proc.communicate(timeout=30)
    assert code == 130, f"exit {code}: {err[-2000:]}"
    assert waited < 5.0, f"took {waited:.1f} s to exit after Ctrl-C"
    assert "Traceback" not in err
    assert not (out / f"{pkg}.json").exists() and not list(out.glob("*.tmp")), "partial results left behind"
