"""Build-at-first-use loader for the fused CPU kernels (ours): the selective scan (``_scan_cpu.cpp``)
and the one-channel Mamba block (``_mamba_cpu.cpp``), with their common helpers (``_cpu_common.h``).

The C++ files have no torch headers: they are compiled with the system C++ compiler (``$CXX``, else ``c++`` /
``g++``) into a shared library cached under ``$PAPERS_SHARED_KERNEL_CACHE`` (default
``~/.cache/papers_shared/kernels``), keyed by the source, the flags, the compiler and the CPU, and called
through :mod:`ctypes`. Compiling takes about a second, against tens of seconds for a
``torch.utils.cpp_extension`` module (which pulls in the torch headers). Any failure (no compiler,
compile error, a library that does not load) leaves :func:`library` returning ``None``, with one
warning naming the reason, and the callers use the chunked PyTorch scan instead.
``PAPERS_SHARED_NATIVE_SCAN=0`` switches the fused path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

_HERE = Path(__file__).parent
_SOURCES = [_HERE / "_scan_cpu.cpp", _HERE / "_mamba_cpu.cpp"]
_HEADERS = [_HERE / "_cpu_common.h"]
_FLAGS = "-O3 -march=native -fopenmp-simd -fno-math-errno -fno-trapping-math -std=c++17 -shared -fPIC -pthread".split()
_ABI = 5
_lock = threading.Lock()
_state: dict[str, object] = {}


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cpu_tag() -> str:
    info = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    info += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return info


def cache_dir() -> Path:
    root = os.environ.get("PAPERS_SHARED_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "papers_shared" / "kernels"


def _build(cxx: str) -> Path:
    src = b"".join(f.read_bytes() for f in [*_SOURCES, *_HEADERS])
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + version.encode() + _cpu_tag().encode()).hexdigest()
    out = cache_dir() / f"papers_scan_cpu_{key[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *_FLAGS, *map(str, _SOURCES), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(cxx).name} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, out)  # atomic: concurrent processes never load a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> ctypes.CDLL | None:
    if os.environ.get("PAPERS_SHARED_NATIVE_SCAN", "1") == "0":
        return None
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    lib = ctypes.CDLL(str(_build(cxx)))
    if lib.papers_scan_abi_version() != _ABI:
        raise RuntimeError("stale kernel library in the cache")
    p, i64, ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.papers_scan_fwd.argtypes = [ci, *[p] * 5, *[i64] * 4, *[p] * 3, ci, p, p, i64]
    lib.papers_scan_fwd.restype = None
    lib.papers_scan_bwd.argtypes = [ci, *[p] * 5, *[i64] * 4, *[p] * 3, ci, *[p] * 6, *[i64] * 3]
    lib.papers_scan_bwd.restype = None
    lib.papers_mamba1_block_size.restype = i64
    lib.papers_mamba1_grad_size.argtypes = [i64] * 4
    lib.papers_mamba1_grad_size.restype = i64
    lib.papers_mamba1_fwd.argtypes = [ci, p, p, i64, p, *[i64] * 4, p, p, i64]
    lib.papers_mamba1_fwd.restype = None
    lib.papers_mamba1_bwd.argtypes = [ci, p, p, i64, p, *[i64] * 4, p, p, p, p, i64]
    lib.papers_mamba1_bwd.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled fused-scan library, or ``None`` where it cannot be built (warned once)."""
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _load()
            except Exception as exc:  # any toolchain failure: fall back to the PyTorch scan
                _state["lib"] = None
                warnings.warn(
                    f"papers_shared: the fused CPU selective scan could not be built ({exc}); "
                    "using the chunked PyTorch scan",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    return library() is not None
