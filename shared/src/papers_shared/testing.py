"""Test helpers used by several packages' test suites (no method code).

:func:`torchrun` launches a script under ``torch.distributed.run`` (the real ``torchrun``) on CPU with the
gloo backend and a loopback rendezvous, as the packages' ``distributed`` tests do; :func:`run_cli`
runs a console script in a subprocess and returns its exit code and output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["CodeRunningPickle", "interruptible", "run_cli", "torchrun"]


def interruptible() -> None:
    """``subprocess.Popen(..., preexec_fn=interruptible)`` for a test that sends the child Ctrl-C.

    A POSIX shell starts ``cmd &`` (without job control) with SIGINT ignored, the ignore is inherited
    through ``exec``, and Python then installs no ``KeyboardInterrupt`` handler: run from such a
    background job (``nohup ... &``), a test's child would never see the SIGINT it is sent. This
    restores the default disposition in the child before it starts.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
        "MASTER_ADDR": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra or {})
    return env


def torchrun(
    args: Sequence[str | os.PathLike],
    nproc: int = 2,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc <args>`` on CPU; raises with the output on failure.

    ``args`` is a script path (or ``-m module``) and its arguments. ``--standalone`` rendezvouses on a free
    loopback port, so tests running side by side do not collide.
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *map(str, args),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(env), cwd=cwd)
    if res.returncode != 0:
        raise AssertionError(
            f"torchrun failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


def run_cli(
    script: str,
    args: Sequence[str | os.PathLike],
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """Run console script ``script`` (found beside the running Python) with ``args``; never raises on exit."""
    exe = Path(sys.executable).with_name(script)
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", script.replace("-", "_") + ".cli"]
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=_env(env), cwd=cwd
    )


class CodeRunningPickle:
    """A crafted object whose full unpickling creates ``target`` (it stands for arbitrary code).

    Put it in anything ``torch.save`` writes; a safe loader must refuse the file and ``target`` must not
    appear.
    """

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))
