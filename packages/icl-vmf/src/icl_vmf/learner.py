"""What the stream runner drives: the :class:`Learner` protocol shared by ICL and every baseline.

A learner owns a class-balanced replay buffer, the train flip and the second view, and implements
``begin_task`` / ``observe`` (one online batch) / ``end_task`` / ``scores`` (class scores over the seen
classes). ``observe`` always receives the *global* batch (every process holds it, see
:mod:`icl_vmf.trainer`); under ``torchrun`` each process runs the encoder only on its share of the rows
(:meth:`Learner.my_rows`) and the losses are written so that the shares sum to the one-process loss, so
gradients averaged by DDP equal the one-process gradients (ours).

:func:`build_learner` builds ICL System1 (:class:`icl_vmf.cl_vmf.ICLLearner`) or a baseline by name.
Weights users exchange (memories, projector, heads) are written as safetensors with JSON metadata
(:meth:`Learner.export_weights`); full training state (optimizers, buffer, generators) goes through
``torch.save`` and is read back with ``weights_only=True`` (:meth:`Learner.full_state`).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from icl_vmf.augment import ViewAugment, random_hflip
from icl_vmf.buffer import ClassBalancedReservoir
from papers_shared import distributed as dist
from papers_shared.errors import CheckpointError

__all__ = ["Learner", "build_learner", "make_augment"]

#: format tag in the metadata of exported weights
WEIGHTS_FORMAT = "icl-vmf-weights/1"


def make_augment(cfg) -> ViewAugment | None:
    """The second-view augmentation of an :class:`~icl_vmf.config.AugmentConfig` (None when disabled)."""
    if not cfg.enabled:
        return None
    return ViewAugment(
        scale=tuple(cfg.crop_scale),
        degrees=cfg.degrees,
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        saturation=cfg.saturation,
        hue=cfg.hue,
        grayscale_p=cfg.grayscale_p,
    )


class Learner(nn.Module):
    """Base of every method on the stream: owns a replay buffer, the train flip and the second view."""

    name = "learner"

    def __init__(
        self, num_classes: int, classes_per_task: int, cfg, device: torch.device, seed: int = 0
    ) -> None:
        super().__init__()
        self.num_classes, self.classes_per_task = num_classes, classes_per_task
        self.cfg, self.device = cfg, torch.device(device)
        self.task = 0
        self.seen_classes = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = make_augment(cfg.augment)
        dtype = torch.uint8 if cfg.train.buffer_dtype == "uint8" else torch.float32
        self.buffer = ClassBalancedReservoir(
            cfg.train.buffer_size, num_classes, device, dtype, seed=seed + 1,
            legacy_sampling=cfg.train.legacy_buffer_sampling,
        )  # fmt: skip

    # -- augmentation helpers ------------------------------------------------------------
    def train_view(self, x: torch.Tensor) -> torch.Tensor:
        """The torchvision train transform's random horizontal flip on the current batch."""
        return random_hflip(x, generator=self.generator) if self.cfg.augment.hflip else x

    def replay_view(self, x: torch.Tensor) -> torch.Tensor:
        """The buffer's train transform on replayed samples (random horizontal flip)."""
        return random_hflip(x, generator=self.generator) if self.cfg.augment.hflip_replay else x

    def with_second_view(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cat[x, aug(x)]`` and duplicated labels (``Onlinevt.get_loss``); unchanged without augmentation."""
        if self.augment is None:
            return x, y
        return torch.cat([x, self.augment(x, self.generator)]), torch.cat([y, y])

    # -- several processes -----------------------------------------------------------------
    @staticmethod
    def my_rows(n: int, split: bool = True) -> torch.Tensor:
        """Rows ``rank, rank + world, ...`` of an ``n``-row batch that this process computes (all with one)."""
        if not split:
            return torch.arange(n)
        return torch.arange(dist.rank(), n, dist.world_size())

    @staticmethod
    def share_scale() -> float:
        """Factor turning a row share of a loss into what DDP's gradient average expects (the world size)."""
        return float(dist.world_size())

    @staticmethod
    def gather_rows_tensor(local: torch.Tensor, n: int, split: bool = True) -> torch.Tensor:
        """The full ``[n, ...]`` tensor from every process's rows (:meth:`my_rows`)."""
        if not split or dist.world_size() == 1:
            return local
        parts = dist.gather_objects(local.detach().cpu())
        out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
        for r, part in enumerate(parts):
            out[r :: dist.world_size()] = part
        return out.to(local.device)

    # -- protocol ------------------------------------------------------------------------
    def begin_task(self, t: int) -> None:
        self.task = t
        self.buffer.reset_screening()

    def observe(self, x: torch.Tensor, y: torch.Tensor, batch_index: int) -> dict[str, float]:
        raise TypeError(f"{type(self).__name__} must implement observe()")

    def end_task(self, t: int) -> None:
        self.seen_classes = (t + 1) * self.classes_per_task

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must implement scores()")

    # -- state ---------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Module state without frozen encoder weights (they are reloaded from the hub/config)."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad and ".vit." in f".{n}"}
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def full_state(self) -> dict[str, Any]:
        """Training state for a checkpoint: tensors, numbers and containers only (loads with weights_only)."""
        return {
            "module": self.trainable_state(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "task": self.task,
            "seen_classes": self.seen_classes,
        }

    def _load_module(self, state: dict[str, torch.Tensor], source: str) -> None:
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch: another config's file
            first = str(exc).strip().splitlines()
            raise CheckpointError(
                f"{source} does not fit this {self.name} learner ({first[-1].strip() if first else exc}); "
                "use the config it was trained with"
            ) from None
        missing = [k for k in missing if ".vit." not in f".{k}"]
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not fit this {self.name} learner: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}; use the config and method it was trained with"
            )

    def load_full_state(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if not isinstance(state, dict) or not {"module", "optimizers", "buffer"} <= set(state):
            raise CheckpointError(f"{source} is not an icl-vmf training checkpoint (no learner state)")
        self._load_module(state["module"], source)
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.task, self.seen_classes = state["task"], state["seen_classes"]

    def export_weights(self, **metadata: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """``(tensors, metadata)`` for a safetensors file: the trained weights (no frozen ViT, no buffer)."""
        meta = {
            "format": WEIGHTS_FORMAT,
            "method": self.name,
            "task": self.task,
            "seen_classes": self.seen_classes,
        }
        meta.update(metadata)
        return self.trainable_state(), {k: json.dumps(v) for k, v in meta.items()}

    def import_weights(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> None:
        """Load :meth:`export_weights` output (read with :func:`papers_shared.checkpoints.load_safetensors`)."""
        try:
            meta = {k: json.loads(v) for k, v in metadata.items()}
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{source}: its metadata is not JSON; not an icl-vmf weights file"
            ) from None
        if meta.get("format") != WEIGHTS_FORMAT:
            raise CheckpointError(f"{source} is not an icl-vmf weights file (format {meta.get('format')!r})")
        if meta.get("method") != self.name:
            raise CheckpointError(
                f"{source} holds {meta.get('method')!r} weights; evaluate it with --method {meta.get('method')}"
            )
        self._load_module(tensors, source)
        self.task, self.seen_classes = int(meta["task"]), int(meta["seen_classes"])


def build_learner(method: str, cfg, data, encoder, device, seed: int = 0) -> Learner:
    """The learner of ``method`` (``"icl"``, an ICL variant of ``cfg.icl_variants`` or a baseline) on
    ``encoder`` for the stream ``data``; its random initialisation is drawn from ``seed`` alone."""
    if cfg.is_icl(method):
        from icl_vmf.cl_vmf import ICLLearner
        from icl_vmf.system1 import build_system1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            system1 = build_system1(cfg.system1, data.num_classes, data.num_tasks, encoder=encoder)
        return ICLLearner(system1, cfg, device, seed, name=method, loss=cfg.loss_for(method))
    from icl_vmf.baselines import ReplayHeadLearner

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReplayHeadLearner(method, encoder, data.num_classes, data.classes_per_task, cfg, device, seed)
