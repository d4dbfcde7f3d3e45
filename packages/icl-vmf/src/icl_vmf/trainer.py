"""The online class-incremental training loop shared by ICL and every baseline.

:func:`run_stream` trains one :class:`~icl_vmf.learner.Learner` task by task (official
``utils/training.py:train``, commit 8c8ad10: shuffled epochs of ``batch_size``, consolidation at the end of
each task, evaluation after it, System2 only in the final evaluation), checkpoints atomically after every
task and resumes.

The same loop runs under ``torchrun --nproc-per-node N`` / ``accelerate launch`` (ours, on
:mod:`papers_shared.distributed`): a ``DistributedSampler`` (``make_sampler``, reseeded every epoch) gives
each process ``batch_size / N`` samples of every global batch; the shares are gathered so that every
process holds the global batch in the one-process order (the replay buffer and the random views stay
identical on every process), each process runs the encoder on its rows only, DDP averages the gradients,
and rank 0 writes checkpoints. One process with the same seed trains exactly the same model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from icl_vmf.evaluation import StreamResult, evaluate
from icl_vmf.learner import Learner
from icl_vmf.system2 import System2
from papers_shared import distributed as dist
from papers_shared.config import ConfigError

__all__ = ["global_batches", "run_stream"]


def _local_batches(dataset: Dataset, sampler, per_rank: int, num_workers: int) -> Iterator[tuple]:
    if isinstance(dataset, TensorDataset):  # sliced directly, no per-item collation
        x, y = dataset.tensors[:2]
        order = torch.tensor(list(sampler), dtype=torch.long)
        for s in range(0, len(order), per_rank):
            idx = order[s : s + per_rank]
            yield x[idx], y[idx]
        return
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=num_workers)
    for xb, yb in loader:
        yield xb, torch.as_tensor(yb).long()


def global_batches(
    dataset: Dataset, batch_size: int, seed: int, epoch: int, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The shuffled global batches of one epoch, on every process, in the one-process order.

    Each process loads its share through :func:`papers_shared.distributed.make_sampler` (seed ``seed``,
    ``set_epoch(epoch)``); the shares are gathered and interleaved back (global position
    ``t * batch_size + rank + world * k``); the sampler's padding samples are dropped.
    """
    ws = dist.world_size()
    try:
        per_rank = dist.per_rank_batch_size(batch_size)
    except ValueError:
        raise ConfigError(
            f"train.batch_size={batch_size} does not split over {ws} processes; run a number of processes "
            f"that divides it, or change train.batch_size"
        ) from None
    sampler = dist.make_sampler(dataset, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    n = len(dataset)
    for t, (xb, yb) in enumerate(_local_batches(dataset, sampler, per_rank, num_workers)):
        if ws == 1:
            yield xb, yb
            continue
        parts = dist.gather_objects((xb, yb))
        pos = [t * batch_size + r + ws * torch.arange(len(p[1])) for r, p in enumerate(parts)]
        keep = [q < n for q in pos]
        order = torch.cat([q[k] for q, k in zip(pos, keep)]).argsort()
        x = torch.cat([p[0][k] for p, k in zip(parts, keep)])[order]
        y = torch.cat([p[1][k] for p, k in zip(parts, keep)])[order]
        yield x, y


def run_stream(
    learner: Learner,
    data,
    cfg,
    seed: int = 0,
    system2: System2 | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> StreamResult:
    """Train ``learner`` task by task (``cfg.train.n_epochs`` shuffled epochs of ``batch_size``), evaluate
    after every task; System2 is consulted in the last evaluation only (``system2.final_only``, code) or
    in every evaluation. With ``checkpoint_dir`` the run is checkpointed after every task (by rank 0) and
    ``resume=True`` continues from the last completed task (every process reads the checkpoint)."""
    from tqdm.auto import tqdm

    from papers_shared.checkpoints import CheckpointManager

    T = data.num_tasks
    res = StreamResult(
        learner.name, seed, data.name, [[None] * T for _ in range(T)], [[None] * T for _ in range(T)]
    )
    start_task = 0
    mgr = CheckpointManager(checkpoint_dir, keep=1) if checkpoint_dir is not None else None
    if mgr is not None and resume:
        state = mgr.load_latest(map_location=learner.device)
        if state is not None:
            learner.load_full_state(state["learner"], source=f"checkpoint in {checkpoint_dir}")
            saved = state["result"]
            res.class_il, res.task_il, res.odi, res.losses = (
                saved["class_il"],
                saved["task_il"],
                saved["odi"],
                saved["losses"],
            )
            res.train_seconds, res.eval_seconds = saved["train_seconds"], saved["eval_seconds"]
            start_task = state["step"] + 1
    show = dist.on_main_process(progress and cfg.train.progress)
    for t in range(start_task, T):
        t0 = time.perf_counter()
        learner.begin_task(t)
        losses = []
        for epoch in range(cfg.train.n_epochs):
            batches = global_batches(
                data.train_sets[t],
                cfg.train.batch_size,
                seed * 100_003 + t * 101,
                epoch,
                cfg.data.num_workers,
            )
            total = -(-len(data.train_sets[t]) // cfg.train.batch_size)
            desc = f"{learner.name} task {t} ep {epoch}"
            for i, (x, y) in enumerate(tqdm(batches, total=total, desc=desc, disable=not show, leave=False)):
                out = learner.observe(x, y, i)
                losses.append(out.get("projection", next(iter(out.values()))))
        learner.end_task(t)
        res.train_seconds += time.perf_counter() - t0
        res.losses.append(float(np.mean(losses)) if losses else float("nan"))
        t1 = time.perf_counter()
        last = t == T - 1
        use2 = system2 if (system2 is not None and (last or not cfg.system2.final_only)) else None
        cil, til, stats, final = evaluate(learner, data, t, cfg, use2)
        res.eval_seconds += time.perf_counter() - t1
        for s in range(t + 1):
            res.class_il[t][s], res.task_il[t][s] = cil[s], til[s]
        res.odi.append(stats.as_dict())
        if final is not None and last:
            res.final_class_il_with_system2 = final
            res.system2 = stats.as_dict()
        if mgr is not None:
            if dist.is_main_process():
                keys = ("class_il", "task_il", "odi", "losses", "train_seconds", "eval_seconds")
                mgr.save(t, {"learner": learner.full_state(), "result": {k: getattr(res, k) for k in keys}})
            dist.barrier()
    return res
