"""The two training loops of ESMA: stage 1 (:func:`pretrain_target_embeddings`) and stage 2
(:class:`EsmaTrainer`), as in the official ``Train_Gen/train.py:train`` (gjq100/ESMA commit eff2015).

Stage 2 runs unchanged in one process or under ``torchrun`` / ``accelerate launch`` (ours): the generator
is wrapped in DDP (:func:`papers_shared.distributed.wrap_ddp`; it has no BatchNorm, so every world size
computes the same update), a ``DistributedSampler`` splits each global batch of ``batch_size`` images
across the processes, the per-image targets ``k_j`` are drawn for the whole global batch from one seeded
generator on every process (each takes its share), losses are averaged across processes, and checkpoints
are written by rank 0 and read by all on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from papers_shared import distributed as dist
from papers_shared.attacks import IMAGENET_MEAN, IMAGENET_STD, GenerativeAttack
from papers_shared.checkpoints import CheckpointManager

from .generator import EsmaGenerator, save_generator
from .matching import esma_matching_loss
from .pretrain import stage1_loss
from .screening import EasySampleBank

__all__ = ["EsmaTrainer", "optimizer_step", "pretrain_target_embeddings", "sharded_loader"]


def sharded_loader(
    data: Dataset | Iterable, batch_size: int | None, seed: int, num_workers: int = 0, drop_last: bool = True
) -> tuple[Iterable, Any]:
    """``(loader, sampler)``: a Dataset gets this process's DataLoader over a ``DistributedSampler``
    (global batch ``batch_size``, reshuffled by ``sampler.set_epoch``); any other iterable of batches is
    used as is (one process only)."""
    if not isinstance(data, Dataset):
        if dist.world_size() > 1:
            raise ValueError("under torchrun pass a Dataset (and batch_size), so that it can be sharded")
        return data, None
    if batch_size is None:
        raise ValueError("batch_size (the global batch) is needed when fit() gets a Dataset")
    sampler = dist.make_sampler(data, shuffle=True, seed=seed, drop_last=drop_last)
    workers = torch.Generator().manual_seed(seed * 1_000_003 + dist.rank())
    loader = DataLoader(
        data, batch_size=dist.per_rank_batch_size(batch_size), sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, generator=workers, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return loader, sampler


def optimizer_step(trainer: Any, loss: Tensor, what: str) -> float:
    """Backward, optimizer step, step count; appends the loss averaged over processes to the history."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss is not finite at step {trainer.step}: {float(loss)}")
    loss.backward()
    trainer.optimizer.step()
    trainer.step += 1
    trainer.history.append(dist.reduce_mean(loss.detach()))
    return trainer.history[-1]


def pretrain_target_embeddings(
    generator: EsmaGenerator,
    features: Tensor,
    steps: int = 15000,
    lr: float = 1.5e-5,
    weight_decay: float = 5e-5,
    norm_weight: float = 0.01,
    cos_weight: float = 5.0,
    dist_weight: float = 1.0,
    accumulate_grads: bool = False,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = False,
) -> list[float]:
    """Stage 1: train only the embedding and the ``target_proj`` layers with AdamW (full batch of K rows)
    on :func:`esma.pretrain.stage1_loss`.

    ``accumulate_grads=True`` reproduces the official loop, which never zeroes gradients (the gradient
    fed to AdamW at step s is the sum of all gradients so far). Returns the loss per step.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise ValueError(f"features must be a (K, C) tensor, got {getattr(features, 'shape', features)}")
    if features.shape[0] != generator.num_targets:
        raise ValueError(f"features have {features.shape[0]} rows for {generator.num_targets} targets")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = list(generator.conditioning_parameters())
    frozen = [p for p in generator.backbone_parameters()]
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    it = range(steps)
    if dist.on_main_process(progress):
        from tqdm.auto import tqdm

        it = tqdm(it, desc="stage 1", unit="step")
    was = generator.training
    generator.train()
    try:
        opt.zero_grad(set_to_none=True)
        for step in it:
            if not accumulate_grads:
                opt.zero_grad(set_to_none=True)
            loss = stage1_loss(generator, features, cos_weight, dist_weight, norm_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage-1 loss is not finite at step {step}: {float(loss)}")
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if callback is not None:
                callback(step, history[-1])
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)
        generator.train(was)
    return history


class EsmaTrainer:
    """Stage-2 trainer: easy-sample matching (:func:`esma.matching.esma_matching_loss`).

    Args:
        generator: stage-1-initialised :class:`EsmaGenerator` with ``num_targets == bank.num_targets``.
        source_model: classifier taking [0, 1] images (frozen, eval mode).
        bank: anchors ``m_k`` (:class:`EasySampleBank`).
        eps_train: L-inf budget of the training projection (10/255).
        lr, weight_decay: AdamW on the backbone parameters (embedding and ``target_proj`` frozen, as the
            official ``train.py`` does by class name).
        smoothing: 3x3 Gaussian on the generator output.
        beta: SmoothL1 transition point.
        device: where the generator and the source model run.
        seed: seeds the target draws (one ``torch.Generator``, identical on every process).
        legacy_double_normalize: the intermediate official commit c31a5a2 of ``Trainer.py`` normalised the
            adversarial images twice before the source model (reverted in 64fbf04; HEAD eff2015
            normalises once, as the default here, where the source model normalises inside).
    """

    def __init__(
        self,
        generator: EsmaGenerator,
        source_model: nn.Module,
        bank: EasySampleBank,
        eps_train: float = 10 / 255,
        lr: float = 1e-4,
        weight_decay: float = 5e-5,
        smoothing: bool = True,
        beta: float = 1.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
        legacy_double_normalize: bool = False,
    ) -> None:
        if generator.num_targets != bank.num_targets:
            raise ValueError(
                f"generator has {generator.num_targets} targets, bank has {bank.num_targets} anchors"
            )
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        self.source_model = source_model.to(self.device).eval()
        for p in self.source_model.parameters():
            p.requires_grad_(False)
        self.bank = bank
        self.anchors = bank.anchors.to(self.device)
        self.beta = float(beta)
        self.eps_train = float(eps_train)
        for p in generator.conditioning_parameters():
            p.requires_grad_(False)
        self.params = [p for p in generator.backbone_parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.model = dist.wrap_ddp(self.generator, self.device)
        self.attack = GenerativeAttack(self.model, eps=eps_train, smoothing=smoothing, conditional=True)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.rng = torch.Generator().manual_seed(seed)
        self.seed = int(seed)
        self.step = 0
        self.epoch = 0
        self.history: list[float] = []
        self.legacy_double_normalize = bool(legacy_double_normalize)

    def sample_targets(self, n: int) -> Tensor:
        """Targets for this process's ``n`` images: ``n * world_size`` draws for the global batch (the
        same on every process), of which this rank takes ``[rank::world_size]`` - the positions its
        ``DistributedSampler`` share has in the one-process batch."""
        ws = dist.world_size()
        draws = torch.randint(0, self.generator.num_targets, (n * ws,), generator=self.rng)
        return draws[dist.rank() :: ws]

    def loss(self, x: Tensor, source_idx: Tensor, target_idx: Tensor) -> Tensor:
        """Differentiable stage-2 loss for given targets (mean over this process's images)."""
        adv = self.attack.perturb(x, target_idx)
        if self.legacy_double_normalize:
            mean = torch.tensor(IMAGENET_MEAN, device=adv.device, dtype=adv.dtype).view(1, -1, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=adv.device, dtype=adv.dtype).view(1, -1, 1, 1)
            adv = (adv - mean) / std
        z = self.source_model(adv)
        return esma_matching_loss(z, self.anchors, target_idx, source_idx, self.beta)

    def train_step(self, x: Tensor, source_idx: Tensor, target_idx: Tensor | None = None) -> float:
        """One AdamW step on this process's share of a batch; ``source_idx`` are target indices of the
        clean classes (-1: other). Returns the loss averaged over processes."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("training images contain NaN or inf values")
        x = x.to(self.device)
        source_idx = torch.as_tensor(source_idx).to(self.device).long()
        if target_idx is None:
            target_idx = self.sample_targets(x.shape[0])
        target_idx = target_idx.to(self.device).long()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        return optimizer_step(self, self.loss(x, source_idx, target_idx), "stage-2")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "target_rng": self.rng.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["target_rng"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.history = [float(v) for v in state.get("history", [])]

    def fit(
        self,
        data: Dataset | Iterable,
        epochs: int = 300,
        ckpt_dir: str | Path | None = None,
        ckpt_every: int = 10,
        resume: bool = False,
        max_steps: int | None = None,
        labels_are_class_ids: bool = True,
        progress: bool = True,
        batch_size: int | None = None,
        num_workers: int = 0,
    ) -> list[float]:
        """Train for ``epochs`` passes over ``data``: a Dataset of ``(image, label)`` (sharded across
        processes, global batch ``batch_size``), or an iterable of batches (one process).

        ``labels_are_class_ids``: labels are class ids mapped through the bank (ids outside the target
        set become -1, never masked); otherwise they already are target indices. With ``ckpt_dir``,
        checkpoints every ``ckpt_every`` epochs (and at the end) via
        :class:`~papers_shared.checkpoints.CheckpointManager`, written by rank 0; ``resume`` continues
        from the newest (read by every process). The final generator goes to
        ``ckpt_dir/generator.safetensors``. Returns the per-step losses.
        """
        mgr = CheckpointManager(ckpt_dir, keep=2) if ckpt_dir is not None else None
        if resume:
            if mgr is None:
                raise ValueError("resume=True needs ckpt_dir")
            dist.barrier()
            state = mgr.load_latest(map_location=self.device)
            if state is not None:
                self.load_state_dict(state)
        loader, sampler = sharded_loader(data, batch_size, self.seed, num_workers)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=epochs,
            initial=self.epoch,
            desc="stage 2",
            unit="epoch",
            disable=not dist.on_main_process(progress),
        )
        stop = max_steps is not None and self.step >= max_steps
        while self.epoch < epochs and not stop:
            if sampler is not None:
                sampler.set_epoch(self.epoch)
            running, n = 0.0, 0
            for x, y in loader:
                y = torch.as_tensor(y)
                src = self.bank.to_index(y, strict=False) if labels_are_class_ids else y
                running += self.train_step(x, src)
                n += 1
                if max_steps is not None and self.step >= max_steps:
                    stop = True
                    break
            self.epoch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / max(n, 1):.4f}", step=self.step)
            if mgr is not None and (self.epoch % max(ckpt_every, 1) == 0 or self.epoch >= epochs or stop):
                if dist.is_main_process():
                    mgr.save(self.epoch, self.state_dict())
                dist.barrier()
        bar.close()
        if ckpt_dir is not None and dist.is_main_process():
            save_generator(
                Path(ckpt_dir) / "generator.safetensors",
                self.generator,
                self.bank.class_ids,
                epoch=self.epoch,
                step=self.step,
            )
        dist.barrier()
        return self.history

    @property
    def last_loss(self) -> float:
        return self.history[-1] if self.history else math.nan
