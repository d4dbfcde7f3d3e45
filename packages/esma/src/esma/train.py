"""Stage 2: generator training with easy-sample matching (spec §3.5).

Per batch: ``k_j ~ U{0..K-1}``; ``mask_j = [y_j != k_j]``; ``u_j = S(G(x_j, k_j))``;
``x_adv_j = clip(Pi_eps_train(u_j; x_j))``; ``z_j = f(x_adv_j)``;
``L2 = (1/B) sum_j mask_j sum_c SmoothL1_beta(z_jc - m_{k_j c})``; AdamW on the generator backbone
(embedding and ``target_proj`` frozen), source model frozen in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from papers_shared.attacks import IMAGENET_MEAN, IMAGENET_STD, GenerativeAttack, smooth_l1_match
from papers_shared.checkpoints import CheckpointManager

from .generator import EsmaGenerator, save_generator
from .screening import EasySampleBank

__all__ = ["EsmaTrainer", "esma_matching_loss"]


def esma_matching_loss(
    logits: Tensor,
    anchors: Tensor,
    target_idx: Tensor,
    source_idx: Tensor | None = None,
    beta: float = 1.0,
) -> Tensor:
    """``(1/B) sum_j [source_j != target_j] sum_c SmoothL1_beta(z_jc - anchors[target_j, c])``.

    ``source_idx`` are the target indices of the clean images' classes (-1 for classes outside the
    target set, never masked); ``None`` masks nothing. Masked rows still count in ``B``.
    """
    if logits.ndim != 2 or anchors.ndim != 2 or logits.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"logits (B, C) and anchors (K, C) must share C, got {tuple(logits.shape)} and {tuple(anchors.shape)}"
        )
    if target_idx.ndim != 1 or target_idx.shape[0] != logits.shape[0]:
        raise ValueError(f"target_idx must have shape ({logits.shape[0]},)")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values")
    target_idx = target_idx.to(logits.device).long()
    mask = None
    if source_idx is not None:
        if source_idx.shape != target_idx.shape:
            raise ValueError("source_idx must have the same shape as target_idx")
        mask = source_idx.to(logits.device) != target_idx
    return smooth_l1_match(logits, anchors.to(logits.device)[target_idx], beta=beta, mask=mask)


def _device_of(m: nn.Module) -> torch.device:
    return next((p.device for p in m.parameters()), torch.device("cpu"))


class EsmaTrainer:
    """Stage-2 trainer (spec §3.5).

    Args:
        generator: stage-1-initialised :class:`EsmaGenerator` with ``num_targets == bank.num_targets``.
        source_model: classifier taking [0, 1] images (frozen, eval mode).
        bank: anchors ``m_k`` (:class:`EasySampleBank`).
        eps_train: L-inf budget of the training projection (10/255).
        lr, weight_decay: AdamW on the backbone parameters.
        smoothing: 3x3 Gaussian on the generator output.
        beta: SmoothL1 transition point.
        seed: seeds the target sampling (``torch.Generator``).
        legacy_double_normalize: reproduce the official stage-2 trainer, which applies the ImageNet
            normalisation twice to the adversarial images before the source model (the anchors come
            from singly normalised images). Here: the images are normalised once before a source
            model that normalises inside (``ImageNetWrapper``).
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
        self.attack = GenerativeAttack(generator, eps=eps_train, smoothing=smoothing, conditional=True)
        for p in generator.conditioning_parameters():
            p.requires_grad_(False)
        self.params = [p for p in generator.backbone_parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.rng = torch.Generator().manual_seed(seed)
        self.step = 0
        self.epoch = 0
        self.history: list[float] = []
        self.legacy_double_normalize = bool(legacy_double_normalize)

    def sample_targets(self, n: int) -> Tensor:
        return torch.randint(0, self.generator.num_targets, (n,), generator=self.rng)

    def loss(self, x: Tensor, source_idx: Tensor, target_idx: Tensor) -> Tensor:
        """Differentiable stage-2 loss for given targets."""
        adv = self.attack.perturb(x, target_idx)
        if self.legacy_double_normalize:
            mean = torch.tensor(IMAGENET_MEAN, device=adv.device, dtype=adv.dtype).view(1, -1, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=adv.device, dtype=adv.dtype).view(1, -1, 1, 1)
            adv = (adv - mean) / std
        z = self.source_model(adv)
        return esma_matching_loss(z, self.anchors, target_idx, source_idx, self.beta)

    def train_step(self, x: Tensor, source_idx: Tensor, target_idx: Tensor | None = None) -> float:
        """One AdamW step on a batch; ``source_idx`` are target indices of the clean classes (-1: other)."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("training images contain NaN or inf values")
        x = x.to(self.device)
        source_idx = torch.as_tensor(source_idx).to(self.device).long()
        if target_idx is None:
            target_idx = self.sample_targets(x.shape[0])
        target_idx = target_idx.to(self.device).long()
        self.generator.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, source_idx, target_idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage-2 loss is not finite at step {self.step}: {float(loss)}")
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.history.append(float(loss.detach()))
        return self.history[-1]

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
        self.history = list(state.get("history", []))

    def fit(
        self,
        loader: Iterable,
        epochs: int = 300,
        ckpt_dir: str | Path | None = None,
        ckpt_every: int = 10,
        resume: bool = False,
        max_steps: int | None = None,
        labels_are_class_ids: bool = True,
        progress: bool = True,
    ) -> list[float]:
        """Train for ``epochs`` passes over ``loader`` (batches ``(images, labels)``).

        ``labels_are_class_ids``: labels are class ids mapped through the bank (ids outside the target
        set become -1, never masked); otherwise they already are target indices. With ``ckpt_dir``,
        atomic checkpoints every ``ckpt_every`` epochs (and at the end) via
        :class:`~papers_shared.checkpoints.CheckpointManager`; ``resume`` continues from the latest.
        The final generator is written to ``ckpt_dir/generator.pt``. Returns the per-step losses.
        """
        mgr = CheckpointManager(ckpt_dir, keep=2) if ckpt_dir is not None else None
        if resume:
            if mgr is None:
                raise ValueError("resume=True needs ckpt_dir")
            state = mgr.load_latest(map_location=self.device)
            if state is not None:
                self.load_state_dict(state)
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=self.epoch, desc="stage 2", unit="epoch", disable=not progress)
        stop = False
        while self.epoch < epochs and not stop:
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
                mgr.save(self.epoch, self.state_dict())
        bar.close()
        if ckpt_dir is not None:
            save_generator(
                Path(ckpt_dir) / "generator.pt",
                self.generator,
                self.bank.class_ids,
                epoch=self.epoch,
                step=self.step,
            )
        return self.history

    @property
    def last_loss(self) -> float:
        return self.history[-1] if self.history else math.nan
