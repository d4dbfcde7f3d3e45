"""Task vectors ``tau_k = theta_k - theta_0`` (spec §2) from modules or state dicts.

A :class:`TaskVector` is an ordered ``name -> Tensor`` mapping with the arithmetic that merging needs.
:func:`task_vector` builds one from any pair of ``nn.Module`` s or state dicts (torchvision, timm,
Hugging Face ``transformers``); :func:`lora_task_vector` takes the LoRA factors of a PEFT model
(spec §3.5, the factors themselves, not ``B @ A``).

Selection rules (spec §3.2, [code]): only floating-point tensors; names containing one of ``exclude``
(default ``("classifier",)``, the RoBERTa heads) are left out; with modules, only *parameters* are used
(buffers such as BatchNorm running statistics stay at their pre-trained values) unless
``include_buffers=True``. 0-dim tensors are kept: the compressor passes them through in full precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "StateLike",
    "TaskVector",
    "check_finite",
    "lora_task_vector",
    "state_dict_of",
    "task_vector",
]

StateLike = nn.Module | Mapping[str, Tensor]


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` naming the tensor when it holds NaN or inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"tensor {name!r} contains NaN or inf values")


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
) -> TaskVector:
    """``tau = theta_ft - theta_0`` on the selected tensors (spec §2, §3.2 selection rules).

    Args:
        pretrained, finetuned: ``nn.Module`` s or state dicts with the same names and shapes.
        exclude: substrings; a tensor whose name contains one is left out (heads; spec: ``classifier``).
        include: optional extra predicate ``(name, tensor) -> bool`` applied after ``exclude``.
        include_buffers: also take module buffers (e.g. BatchNorm statistics); state dicts always
            contribute all their floating tensors.
        dtype: dtype of the differences (``None`` keeps the parameters' dtype).
    """
    p = state_dict_of(pretrained, include_buffers)
    f = state_dict_of(finetuned, include_buffers)
    exclude = tuple(exclude)
    out: dict[str, Tensor] = {}
    for name, t0 in p.items():
        if not t0.is_floating_point() or _matches(name, exclude):
            continue
        if include is not None and not include(name, t0):
            continue
        if name not in f:
            raise KeyError(f"tensor {name!r} of the pre-trained model is missing from the fine-tuned one")
        t1 = f[name]
        if t1.shape != t0.shape:
            raise ValueError(
                f"shape mismatch for {name!r}: pre-trained {tuple(t0.shape)} vs fine-tuned {tuple(t1.shape)}"
            )
        check_finite(name, t0)
        check_finite(name, t1)
        d = (t1.to(dtype) - t0.to(dtype)) if dtype is not None else (t1 - t0.to(t1.dtype))
        out[name] = d
    if not out:
        raise ValueError("no tensor selected for the task vector (check exclude/include)")
    return TaskVector(out)


def lora_task_vector(
    peft_model: StateLike,
    adapter_name: str | None = None,
    pattern: Iterable[str] = ("lora_A", "lora_B"),
    dtype: torch.dtype | None = torch.float32,
) -> TaskVector:
    """The LoRA factors ``{A, B}`` of a PEFT model (or its state dict) as a task vector (spec §3.5).

    The factors are the task vector themselves (their pre-trained value is zero in the official code);
    names are kept as in ``peft_model.named_parameters()`` so they can be switched back in with
    :class:`t_switch.merge.SwitchedModel`. ``adapter_name`` keeps only that adapter's factors.
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
