"""The training loop shared by every model and its baseline: AdamW with the S4 parameter groups (lr
``min(lr, 1e-3)`` and no weight decay for the SSM core, state-spaces/s4 @ 2ed46fc
``models/s4/s4d.py:S4DKernel.register``), warmup + cosine schedule, gradient clipping and accumulation,
periodic evaluation, atomic checkpoints and exact resume (batches are a function of the global step, so
a resumed run sees the same data).

The same loop runs in one process or under ``torchrun`` / ``accelerate launch`` (``papers_shared.
distributed``): the model is wrapped in DDP, each process trains on its share of the global batch
(``batch_fn`` returns this process's rows, :class:`StepSampler` gives them), losses are averaged over
processes, and rank 0 alone writes checkpoints, metrics and the final weights; every process reads the
newest checkpoint on resume.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from papers_shared import distributed as dist
from papers_shared.checkpoints import CheckpointManager, atomic_write_text
from papers_shared.config import ConfigError
from papers_shared.device import autocast, seed_everything
from smr_ssm.config import TrainConfig

__all__ = ["StepSampler", "Trainer", "build_optimizer", "build_scheduler", "local_batch_size", "param_groups"]

_NO_DECAY_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.Embedding)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    ssm_lr: float | None = None,
    smr_weight_decay: float = 0.0,
    decay_all: bool = False,
) -> list[dict[str, Any]]:
    """AdamW parameter groups (the S4 convention for the SSM core; ours for the SMR memories).

    * ``ssm``: parameters tagged ``"ssm"`` by the hosts (``log_dt``, ``A``-parameters, S5's ``B``, Mega's
      damping): lr ``ssm_lr`` (default ``min(lr, 1e-3)``), weight decay 0 (the S4 ``_optim`` convention);
    * ``smr``: SMR memories: main lr, ``smr_weight_decay`` (ours, 0);
    * ``no_decay``: tagged ``"no_decay"`` (Mamba's ``A_log``, ``D``), biases, norm and embedding weights;
    * ``decay``: everything else, ``weight_decay``.
    """
    ssm_lr = min(lr, 1e-3) if ssm_lr is None else ssm_lr
    no_decay_ids = set()
    if not decay_all:
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, _NO_DECAY_TYPES) or name == "bias":
                    no_decay_ids.add(id(p))
    groups: dict[str, list[nn.Parameter]] = {"ssm": [], "smr": [], "no_decay": [], "decay": []}
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        tagged = getattr(p, "_optim_group", None)
        if tagged in ("ssm", "smr"):
            groups[tagged].append(p)
        elif tagged == "no_decay" or id(p) in no_decay_ids:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    settings = {
        "ssm": (ssm_lr, 0.0),
        "smr": (lr, smr_weight_decay),
        "no_decay": (lr, 0.0),
        "decay": (lr, weight_decay),
    }
    return [
        {"params": ps, "lr": settings[k][0], "weight_decay": settings[k][1], "name": k}
        for k, ps in groups.items()
        if ps
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.ssm_lr, cfg.smr_weight_decay, cfg.decay_all)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_frac * max_steps`` steps, then cosine (or constant/linear) decay to
    ``min_lr_ratio`` of each group's lr."""
    warm = int(round(cfg.warmup_frac * cfg.max_steps))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, cfg.max_steps - warm))
        decay = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1 - t
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def local_batch_size(global_batch: int) -> int:
    """This process's share of the global batch (``ConfigError`` when the processes do not divide it)."""
    try:
        return dist.per_rank_batch_size(global_batch)
    except ValueError as exc:
        raise ConfigError(f"train.batch_size: {exc}; choose a multiple of the process count") from None


class StepSampler:
    """Indices of this process's batch at a global step, a pure function of the step (exact resume).

    Epoch ``e`` is permutation ``e`` of the ``n`` items (seeded by ``seed + e``) as a
    ``DistributedSampler`` (:func:`papers_shared.distributed.make_sampler`) deals it out: one process
    gets the whole permutation in order; with ``N`` processes each takes every ``N``-th item and a
    ``batch_size / N`` share of each global batch, so that the global batches are those of one process
    (exactly when ``N`` divides ``n``; the sampler pads otherwise).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local = local_batch_size(batch_size)
        self.sampler = dist.make_sampler(range(n), shuffle=True, seed=seed)
        self.n_local = len(self.sampler)
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self.sampler.set_epoch(epoch)
            self._cache[epoch] = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        return self._cache[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        pos = step * self.local + torch.arange(self.local)
        epochs, within = pos // self.n_local, pos % self.n_local
        return torch.stack([self._perm(int(e))[int(i)] for e, i in zip(epochs, within)])


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


class Trainer:
    """Package trainer shared by the SMR models and their baselines.

    Args:
        model: returns an object with ``.loss`` from ``model(**batch)``.
        cfg: :class:`~smr_ssm.config.TrainConfig`.
        batch_fn: ``batch_fn(i) -> dict``: this process's rows of micro-batch ``i`` (``= step *
            grad_accum + k``); in one process the whole batch.
        eval_fn: ``eval_fn(model) -> dict`` of metrics (called on every process with the unwrapped
            model; it reduces over processes itself), every ``eval_every`` steps and at the end.
        out_dir: checkpoints (``out_dir/checkpoints``), ``metrics.jsonl`` and ``final`` weights, written
            by rank 0; ``None`` trains in memory only.
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        batch_fn: Callable[[int], dict[str, Any]],
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.batch_fn, self.eval_fn = cfg, batch_fn, eval_fn
        self.progress = dist.on_main_process(progress)
        self.device = dist.init_distributed(cfg.device).device
        self.module = model.to(self.device)
        self.model = dist.wrap_ddp(self.module, self.device)
        self.optimizer = build_optimizer(self.module, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.ckpt = (
            CheckpointManager(self.out_dir / "checkpoints", keep=cfg.keep_checkpoints)
            if self.out_dir
            else None
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.out_dir is not None and dist.is_main_process():
            path = self.out_dir / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(self) -> None:
        """A checkpoint of the training state (rank 0 writes; every process waits for it)."""
        if self.ckpt is None:
            return
        if dist.is_main_process():
            self.ckpt.save(
                self.step,
                {
                    "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "history": self.history,
                },
            )
        dist.barrier()

    def resume(self) -> bool:
        """Restore the newest loadable checkpoint (model, optimizer, schedule, step, RNG); False if none."""
        if self.ckpt is None:
            return False
        state = self.ckpt.load_latest(map_location=self.device)
        if state is None:
            return False
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        return True

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        was = self.module.training
        self.module.eval()
        with torch.no_grad():
            metrics = self.eval_fn(self.module)
        self.module.train(was)
        return metrics

    def _micro_step(self, i: int, last: bool) -> float:
        batch = _to(self.batch_fn(i), self.device)
        sync = contextlib.nullcontext() if (last or self.model is self.module) else self.model.no_sync()
        with sync:
            with autocast(self.device, enabled=self.cfg.bf16):
                loss = self.model(**batch).loss
            finite = bool(torch.isfinite(loss))
            if dist.world_size() > 1:  # every process stops together (no rank left waiting in all-reduce)
                finite = dist.reduce_mean(float(finite)) == 1.0
            if not finite:
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at step {self.step} (on some process)"
                )
            (loss / self.cfg.grad_accum).backward()
        return loss.item() / self.cfg.grad_accum

    def train(self, resume: bool = False, stop_at: int | None = None) -> list[dict[str, Any]]:
        """Run to ``max_steps`` (continuing from the newest checkpoint when ``resume``). ``stop_at`` ends
        the run early after that step with a checkpoint, as an interruption would (the schedule still
        spans ``max_steps``)."""
        cfg = self.cfg
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        if not (resume and self.resume()):
            seed_everything(cfg.seed)
        self.model.train()
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, disable=not self.progress, desc="train", leave=False
        )
        running, count = 0.0, 0
        while self.step < end:
            self.optimizer.zero_grad(set_to_none=True)
            total = sum(
                self._micro_step(self.step * cfg.grad_accum + k, k == cfg.grad_accum - 1)
                for k in range(cfg.grad_accum)
            )
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            running, count = running + total, count + 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                loss = dist.reduce_mean(running / count)
                self._log({"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{loss:.4f}")
                running, count = 0.0, 0
            if (
                self.eval_fn is not None
                and cfg.eval_every
                and self.step % cfg.eval_every == 0
                and self.step < cfg.max_steps
            ):
                self._log({"step": self.step, **self.evaluate()})
            if self.ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        if self.step < cfg.max_steps:
            self.save()
            return self.history
        final = self.evaluate()
        if final:
            self._log({"step": self.step, "final": True, **final})
        if self.out_dir is not None:
            self.save()
            if dist.is_main_process():
                if hasattr(self.module, "save_pretrained"):
                    self.module.save_pretrained(self.out_dir / "final")
                atomic_write_text(
                    self.out_dir / "final_metrics.json",
                    json.dumps({"step": self.step, **final}, indent=2) + "\n",
                )
            dist.barrier()
        return self.history
