"""Device choice, seeding, autocast, timing, peak memory and optional-kernel probes."""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Timer",
    "autocast",
    "get_device",
    "kernel_available",
    "peak_memory_bytes",
    "reset_peak_memory",
    "seed_everything",
    "time_fn",
]


def get_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return a device: ``"auto"`` picks cuda, then mps, then cpu; explicit names are validated."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but CUDA is not available on this machine")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise RuntimeError(f"device {pref!r} requested but MPS is not available on this machine")
    return dev


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels.

    Returns a CPU ``torch.Generator`` seeded with ``seed`` for code that wants an explicit generator.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def autocast(device: torch.device | str, dtype: torch.dtype | None = None, enabled: bool = True):
    """Mixed-precision context: bf16 on CUDA (fp16 if asked), bf16 on CPU when enabled, else a no-op."""
    dev = torch.device(device)
    if not enabled or dev.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype or torch.bfloat16)


@dataclass
class Timer:
    """Wall-clock timer: CUDA events on a CUDA device, ``perf_counter`` elsewhere.

    >>> with Timer(device) as t:
    ...     work()
    >>> t.seconds
    """

    device: torch.device | str = "cpu"
    seconds: float = float("nan")

    def __enter__(self) -> Timer:
        self._dev = torch.device(self.device)
        if self._dev.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self._dev.type == "cuda":
            self._end.record()
            torch.cuda.synchronize(self._dev)
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def time_fn(
    fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 5, warmup: int = 1
) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` calls; returns the list of seconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        out.append(t.seconds)
    return out


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Peak allocated memory: CUDA allocator statistics on GPU, process max RSS on CPU.

    On CPU the figure is the resident-set high-water mark of the whole process, so compare two
    methods in separate processes (the benchmarks do) or use :func:`tensor_bytes` for model state.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except ImportError:  # pragma: no cover - non-POSIX
        return -1


def tensor_bytes(obj: torch.nn.Module | dict | torch.Tensor) -> int:
    """Bytes held by the tensors of a module, a state dict or a tensor."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return sum(t.numel() * t.element_size() for t in obj.values() if isinstance(t, torch.Tensor))


__all__ += ["tensor_bytes"]


def kernel_available(name: str) -> bool:
    """True when an optional compiled kernel can be used here.

    ``"mamba_ssm"``: mamba-ssm's selective-scan CUDA extension imports and CUDA is available.
    ``"causal_conv1d"``: the causal-conv1d CUDA extension imports and CUDA is available.
    Any failure (missing package, missing CUDA extension, undefined symbols) returns False; importing
    mamba-ssm on a CPU-only machine raises at import time, which is why the probe is guarded.
    """
    modules = {
        "mamba_ssm": "selective_scan_cuda",
        "causal_conv1d": "causal_conv1d_cuda",
    }
    if name not in modules:
        raise ValueError(f"unknown kernel {name!r}; known: {sorted(modules)}")
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module(modules[name])
        if name == "mamba_ssm":
            importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception:
        return False
    return True
