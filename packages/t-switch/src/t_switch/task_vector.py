"""Task vectors ``tau_k = theta_k - theta_0`` (paper, after Ilharco et al. 2023) from modules or state dicts.

A :class:`TaskVector` is an ordered ``name -> Tensor`` mapping with the arithmetic that merging needs.
:func:`task_vector` builds one from any pair of ``nn.Module`` s or state dicts (torchvision, timm,
Hugging Face ``transformers``); :func:`lora_task_vector` takes the LoRA factors of a PEFT model
(official ``merge_vit/merge_vit_lora.py:drop_elements_separately_lora``: the factors themselves, not ``B @ A``).

Selection rules (official ``drop_elements_separately`` / ``merge_lm/merge_roberta.py``): only floating-point tensors; names containing one of ``exclude``
(default ``("classifier",)``, the RoBERTa heads) are left out; with modules, only *parameters* are used
(buffers such as BatchNorm running statistics stay at their pre-trained values) unless
``include_buffers=True``. 0-dim tensors are kept: the compressor passes them through in full precision.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from papers_shared.checkpoints import load_safetensors, save_safetensors
from papers_shared.errors import CheckpointError, InputError
from papers_shared.results import to_jsonable

__all__ = [
    "StateLike",
    "TaskVector",
    "UnexpectedKeysWarning",
    "check_finite",
    "load_task_vector",
    "lora_task_vector",
    "save_task_vector",
    "state_dict_of",
    "task_vector",
]

StateLike = nn.Module | Mapping[str, Tensor]


class UnexpectedKeysWarning(UserWarning):
    """A fine-tuned state holds tensors that the pre-trained one lacks (they are left out)."""


def check_finite(name: str, t: Tensor) -> None:
    """Raise :class:`~papers_shared.errors.InputError` naming the tensor when it holds NaN or inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InputError(f"tensor {name!r} contains NaN or inf values")


def state_dict_of(obj: StateLike, include_buffers: bool = False) -> dict[str, Tensor]:
    """Detached ``name -> Tensor`` view (no copy) of a module's parameters (and buffers) or a state dict."""
    if isinstance(obj, nn.Module):
        out = {n: p.detach() for n, p in obj.named_parameters()}
        if include_buffers:
            out.update({n: b.detach() for n, b in obj.named_buffers()})
        return out
    if isinstance(obj, Mapping):
        bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"state dict values must be tensors; not tensors: {bad[:5]}")
        return {k: v.detach() for k, v in obj.items()}
    raise TypeError(f"expected an nn.Module or a mapping of tensors, got {type(obj).__name__}")


class TaskVector(Mapping[str, Tensor]):
    """An ordered mapping ``name -> tau`` with linear arithmetic (``+``, ``-``, scalar ``*``)."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        for k, v in tensors.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"task vector entry {k!r} is a {type(v).__name__}, not a Tensor")
        self._t: dict[str, Tensor] = dict(tensors)

    # Mapping protocol ------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Tensor:
        return self._t[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"TaskVector({len(self)} tensors, {self.numel():,} entries)"

    # arithmetic -------------------------------------------------------------------------------------
    def _zip(self, other: TaskVector) -> Iterable[tuple[str, Tensor, Tensor]]:
        if set(self._t) != set(other._t):
            diff = sorted(set(self._t) ^ set(other._t))
            raise KeyError(f"task vectors hold different tensors: {diff[:5]}")
        return ((k, v, other._t[k]) for k, v in self._t.items())

    def __add__(self, other: TaskVector) -> TaskVector:
        return TaskVector({k: a + b for k, a, b in self._zip(other)})

    def __sub__(self, other: TaskVector) -> TaskVector:
        return TaskVector({k: a - b for k, a, b in self._zip(other)})

    def __mul__(self, alpha: float) -> TaskVector:
        return TaskVector({k: v * alpha for k, v in self._t.items()})

    __rmul__ = __mul__

    def __neg__(self) -> TaskVector:
        return self * -1.0

    def map(self, fn: Callable[[str, Tensor], Tensor]) -> TaskVector:
        """Apply ``fn(name, tensor)`` to every entry."""
        return TaskVector({k: fn(k, v) for k, v in self._t.items()})

    def to(self, *args, **kwargs) -> TaskVector:
        return TaskVector({k: v.to(*args, **kwargs) for k, v in self._t.items()})

    def numel(self) -> int:
        return sum(v.numel() for v in self._t.values())

    def nnz(self) -> int:
        return sum(int(torch.count_nonzero(v)) for v in self._t.values())

    def norm(self) -> float:
        return float(torch.sqrt(sum((v.double() ** 2).sum() for v in self._t.values())))

    def flatten(self) -> Tensor:
        """All entries concatenated in order (float32)."""
        return torch.cat([v.reshape(-1).float() for v in self._t.values()])

    def apply_to(self, pretrained: StateLike, alpha: float = 1.0) -> dict[str, Tensor]:
        """``theta_0 + alpha * tau`` on the tensors of this vector (others copied by reference)."""
        base = state_dict_of(pretrained, include_buffers=True)
        out = dict(base)
        for k, v in self._t.items():
            if k not in base:
                raise KeyError(f"task-vector tensor {k!r} is absent from the pre-trained weights")
            out[k] = base[k] + alpha * v.to(base[k].dtype)
        return out


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(p in name for p in patterns)


def task_vector(
    pretrained: StateLike,
    finetuned: StateLike,
    exclude: Iterable[str] = ("classifier",),
    include: Callable[[str, Tensor], bool] | None = None,
    include_buffers: bool = False,
    dtype: torch.dtype | None = torch.float32,
    unexpected: str = "warn",
) -> TaskVector:
    """``tau = theta_ft - theta_0`` on the selected tensors.

    Args:
        pretrained, finetuned: ``nn.Module`` s or state dicts with the same names and shapes.
        exclude: substrings; a tensor whose name contains one is left out (heads; RoBERTa code: ``classifier``).
        include: optional extra predicate ``(name, tensor) -> bool`` applied after ``exclude``.
        include_buffers: also take module buffers (e.g. BatchNorm statistics); state dicts always
            contribute all their floating tensors.
        dtype: dtype of the differences (``None`` keeps the parameters' dtype).
        unexpected: what to do with tensors of ``finetuned`` that ``pretrained`` lacks (they cannot be
            part of the task vector): ``"warn"`` (:class:`UnexpectedKeysWarning` naming them), ``"error"``
            (:class:`~papers_shared.errors.InputError`) or ``"ignore"``.
    """
    if unexpected not in ("warn", "error", "ignore"):
        raise ValueError(f"unexpected must be 'warn', 'error' or 'ignore', got {unexpected!r}")
    p = state_dict_of(pretrained, include_buffers)
    f = state_dict_of(finetuned, include_buffers)
    extra = [k for k in f if k not in p]
    if extra and unexpected != "ignore":
        shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
        msg = f"the fine-tuned weights hold {len(extra)} tensor(s) the pre-trained ones lack: {shown}"
        if unexpected == "error":
            raise InputError(msg + "; check that both files come from the same architecture")
        warnings.warn(msg + " (left out of the task vector)", UnexpectedKeysWarning, stacklevel=2)
    exclude = tuple(exclude)
    out: dict[str, Tensor] = {}
    for name, t0 in p.items():
        if not t0.is_floating_point() or _matches(name, exclude):
            continue
        if include is not None and not include(name, t0):
            continue
        if name not in f:
            raise InputError(f"tensor {name!r} of the pre-trained model is missing from the fine-tuned one")
        t1 = f[name]
        if t1.shape != t0.shape:
            raise InputError(
                f"shape mismatch for {name!r}: pre-trained {tuple(t0.shape)} vs fine-tuned {tuple(t1.shape)}"
            )
        check_finite(name, t0)
        check_finite(name, t1)
        d = (t1.to(dtype) - t0.to(dtype)) if dtype is not None else (t1 - t0.to(t1.dtype))
        out[name] = d
    if not out:
        raise InputError("no tensor selected for the task vector (check exclude/include)")
    return TaskVector(out)


def save_task_vector(
    path: str | Path, tv: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a task vector as safetensors; ``metadata`` (JSON-able) goes in the header under ``t_switch``."""
    header = {"format": "t-switch-task-vector", "version": 1, "meta": dict(metadata or {})}
    return save_safetensors(dict(tv), path, metadata={"t_switch": json.dumps(to_jsonable(header))})


def load_task_vector(path: str | Path) -> tuple[TaskVector, dict[str, Any]]:
    """Read a task vector written by :func:`save_task_vector`: ``(tv, metadata)``; never unpickles."""
    tensors, meta = load_safetensors(path)
    try:
        header = json.loads(meta.get("t_switch", ""))
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != "t-switch-task-vector":
        raise CheckpointError(f"{path} is not a t-switch task-vector file (no 't_switch' header)")
    return TaskVector(tensors), dict(header.get("meta") or {})


def lora_task_vector(
    peft_model: StateLike,
    adapter_name: str | None = None,
    pattern: Iterable[str] = ("lora_A", "lora_B"),
    dtype: torch.dtype | None = torch.float32,
) -> TaskVector:
    """The LoRA factors ``{A, B}`` of a PEFT model (or its state dict) as a task vector (official LoRA code).

    The factors are the task vector themselves (their pre-trained value is zero in the official code);
    names are kept as in ``peft_model.named_parameters()`` so they can be switched back in with
    :class:`t_switch.bank.SwitchedModel`. ``adapter_name`` keeps only that adapter's factors.
    """
    sd = state_dict_of(peft_model)
    pats = tuple(pattern)
    out = {}
    for name, t in sd.items():
        if not t.is_floating_point() or not _matches(name, pats):
            continue
        if adapter_name is not None and f".{adapter_name}." not in f"{name}.":
            continue
        check_finite(name, t)
        out[name] = t.to(dtype) if dtype is not None else t.clone()
    if not out:
        raise ValueError(f"no LoRA factors (names containing {pats}) found")
    return TaskVector(out)
