"""Multi-process training and evaluation on ``torch.distributed``, launched by ``torchrun`` or ``accelerate``.

Nothing here starts processes: a launcher (``torchrun --nproc-per-node N``, ``accelerate launch``, a
SLURM ``srun`` that sets the same variables) does, and :func:`init_distributed` joins the process group it
describes. Every helper is a no-op in a single process, so a training loop written with them runs
unchanged from one CPU to several nodes:

- :func:`init_distributed` / :func:`cleanup`: join (``nccl`` on CUDA, ``gloo`` on CPU) and leave;
- :func:`rank`, :func:`world_size`, :func:`local_rank`, :func:`is_main_process`, :func:`barrier`;
- :func:`wrap_ddp`: ``DistributedDataParallel`` when ``world_size() > 1`` (SyncBatchNorm on CUDA);
- :func:`make_sampler` + :func:`per_rank_batch_size`: the global batch stays constant across world sizes,
  and one process with the same seed sees the same samples in the same order (a ``DistributedSampler``
  with one replica), so a run's numbers do not depend on how many processes ran it;
- :func:`reduce_mean`, :func:`reduce_dict`, :func:`gather_objects`: metrics and result rows;
- :func:`shard`: an evaluation's work list split by rank (rows gathered back with :func:`gather_rows`);
- :func:`main_process_first`, :func:`on_main_process`: rank-0 writes (checkpoints, results, progress bars).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "barrier",
    "cleanup",
    "gather_objects",
    "gather_rows",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched",
    "local_rank",
    "main_process_first",
    "make_sampler",
    "on_main_process",
    "per_rank_batch_size",
    "rank",
    "reduce_dict",
    "reduce_mean",
    "shard",
    "unwrap",
    "world_size",
    "wrap_ddp",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def launched() -> bool:
    """True when a launcher started this process as one of several (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group a launcher described (a no-op in a single process).

    ``device`` ``"auto"``/``None`` picks ``cuda:<local_rank>`` when CUDA is present, else CPU; the backend
    defaults to ``nccl`` for CUDA and ``gloo`` for CPU. Safe to call twice.
    """
    from papers_shared.device import get_device

    dev = get_device(device or "auto")
    if dev.type == "cuda" and launched():
        dev = torch.device("cuda", local_rank())
        torch.cuda.set_device(dev)
    if launched() and not is_distributed():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    return DistInfo(rank(), world_size(), local_rank(), dev, dist.get_backend() if is_distributed() else None)


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, caches), the others after it finished."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def on_main_process(progress: bool = True) -> bool:
    """``progress and rank == 0``: show bars / write files only once."""
    return bool(progress) and is_main_process()


def wrap_ddp(
    model: torch.nn.Module, device: torch.device | None = None, **ddp_kwargs: Any
) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when several processes run, else ``model`` unchanged.

    On CUDA BatchNorm layers become SyncBatchNorm so that batch statistics are those of the global batch
    (SyncBatchNorm has no CPU implementation; on CPU each rank normalises its own shard).
    """
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = device or next(model.parameters()).device
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index], **ddp_kwargs)
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (for saving and evaluation)."""
    return getattr(model, "module", model)


def per_rank_batch_size(global_batch: int) -> int:
    """``global_batch / world_size``; raises if it does not divide (the global batch is kept constant)."""
    from papers_shared.errors import ConfigError

    ws = world_size()
    if global_batch % ws:
        raise ConfigError(
            f"global batch size {global_batch} is not divisible by the {ws} processes; "
            "choose a batch size (or a process count) that divides"
        )
    return global_batch // ws


def make_sampler(
    dataset: Sequence[Any], shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> torch.utils.data.DistributedSampler:
    """A ``DistributedSampler`` over this process's share, also with one process.

    With one replica it yields the whole permutation, in the order the N-process samplers interleave:
    batch ``t`` of one process with global batch ``B`` holds exactly the samples of batch ``t`` of all N
    processes with ``B / N`` each. Call ``sampler.set_epoch(epoch)`` every epoch (a new permutation).
    """
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def reduce_mean(value: torch.Tensor | float, weight: float | None = None) -> float:
    """Mean over processes of ``value`` (weighted by ``weight``, e.g. the local sample count)."""
    v = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
    if world_size() == 1:
        return v
    w = 1.0 if weight is None else float(weight)
    t = torch.tensor([v * w, w], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t[0] / t[1])


def reduce_dict(metrics: Mapping[str, float], weight: float | None = None) -> dict[str, float]:
    """:func:`reduce_mean` of every value, in one collective."""
    keys = sorted(metrics)
    if world_size() == 1:
        return {k: float(metrics[k]) for k in keys}
    w = 1.0 if weight is None else float(weight)
    t = torch.tensor([float(metrics[k]) * w for k in keys] + [w], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}


def gather_objects(obj: T) -> list[T]:
    """Every process's ``obj`` (picklable, from our own processes), in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of an evaluation's work list: ``items[rank::world_size]``."""
    return list(items[rank() :: world_size()])


def gather_rows(rows: Sequence[T], items: Sequence[Any] | None = None) -> list[T]:
    """Rows computed by :func:`shard` on each process, back in the order of the full work list.

    ``rows`` holds this process's results for ``shard(items)``, one per item; the result on every process
    equals the list one process would have computed alone.
    """
    parts = gather_objects(list(rows))
    ws = len(parts)
    total = sum(len(p) for p in parts)
    if items is not None and total != len(items):
        raise ValueError(f"gathered {total} rows for {len(items)} work items")
    out: list[Any] = [None] * total
    for r, part in enumerate(parts):
        for i, row in enumerate(part):
            out[r + i * ws] = row
    return out


def _comm_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
