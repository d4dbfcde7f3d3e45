"""Keeping the meta-gradient optimizers' state identical on every process of a ``torchrun`` /
``accelerate launch`` run (ours: the official code trains on one GPU).

``DistributedDataParallel`` averages the gradients of the model's parameters. Two more signals of
:class:`~fsg_bnn.lookahead.MetaGradientOptimizer` are computed per process and must be averaged the same
way, or the processes drift apart:

* the captured ``g = dloss/dW^`` of every binarized layer (a tensor hook, not a parameter gradient): it
  feeds the fast net, the HGS and the slow net at the next generation;
* the gradients of the meta nets (fast / slow / MetaQuant net), which reach them through the look-ahead
  weights ``W_meta`` in the user's ``loss.backward()``; the meta nets are not part of the model, so DDP
  does not see them.

With equal per-process batches the mean of the per-process mean gradients is the gradient of the mean
loss over the global batch, so one process with the global batch and ``N`` processes with ``1/N`` of it
each take the same step (up to float rounding). :func:`average_meta_signals` does both averages in one
``all_reduce`` per dtype; :meth:`MetaGradientOptimizer.step` calls it first. The BNN weights' own
``.grad`` is overwritten by the meta gradient in ``step()``; biases and BatchNorm parameters keep the
gradient DDP averaged (once). Everything here is a no-op in a single process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from papers_shared import distributed as pd

__all__ = [
    "all_reduce_mean_",
    "average_meta_signals",
    "broadcast_meta_nets",
    "sum_across_ranks",
    "wrap_model",
]


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over processes of each tensor, as new tensors (one ``all_reduce`` per dtype/device).

    Every process must pass tensors of the same shapes in the same order. With one process the
    tensors are returned unchanged.
    """
    tensors = list(tensors)
    ws = pd.world_size()
    if ws == 1 or not tensors:
        return tensors
    out: list[Any] = [None] * len(tensors)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for idx in groups.values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
        dist.all_reduce(flat)
        flat.div_(ws)
        start = 0
        for i in idx:
            n = tensors[i].numel()
            out[i] = flat[start : start + n].view_as(tensors[i])
            start += n
    return out


def average_meta_signals(optimizer: Any) -> None:
    """Average the captured ``dloss/dW^`` of every binarized layer and the meta nets' gradients over
    the processes (in place of the per-process values; a no-op in one process)."""
    if pd.world_size() == 1:
        return
    layers = [layer for _, layer in optimizer.layers if layer.quantized_grad is not None]
    params = [p for p in optimizer.meta_nets.parameters() if p.grad is not None]
    averaged = all_reduce_mean_([layer.quantized_grad for layer in layers] + [p.grad for p in params])
    for layer, g in zip(layers, averaged[: len(layers)], strict=True):
        layer.quantized_grad = g
    for p, g in zip(params, averaged[len(layers) :], strict=True):
        p.grad.copy_(g)


def broadcast_meta_nets(optimizer: Any) -> None:
    """Copy rank 0's meta-net parameters and buffers to every process (a no-op in one process or for an
    optimizer without meta nets, e.g. STE's torch Adam)."""
    nets = getattr(optimizer, "meta_nets", None)
    if pd.world_size() == 1 or nets is None:
        return
    with torch.no_grad():
        for t in [*nets.parameters(), *nets.buffers()]:
            dist.broadcast(t.data, src=0)


def sum_across_ranks(values: Sequence[float]) -> list[float]:
    """The sum over processes of each number (float64; returned unchanged in one process)."""
    if pd.world_size() == 1:
        return [float(v) for v in values]
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """``DistributedDataParallel(model)`` when several processes run, else ``model``.

    ``sync_bn`` (CUDA only): BatchNorm over the global batch (SyncBatchNorm, what one GPU computes with
    the same global batch; :func:`papers_shared.distributed.wrap_ddp`), or ``False``: each GPU normalises
    its own share (no extra communication in the forward). CPU (gloo) has no SyncBatchNorm: there each
    process always normalises its own share. ``find_unused_parameters`` is not needed: every parameter
    of the model reaches the loss in every training forward (the binarized weights through ``W_meta``).
    """
    if pd.world_size() == 1:
        return model
    if device.type == "cuda" and not sync_bn:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index])
    return pd.wrap_ddp(model, device)
