"""The ESMA attack (spec §3.6) and the easy-sample-matching loss plug-in for iterative attacks (§3.7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from papers_shared.attacks import GenerativeAttack

from .generator import EsmaGenerator
from .screening import EasySampleBank

__all__ = ["EasySampleMatchingLoss", "EsmaAttack"]


class EsmaAttack(GenerativeAttack):
    """``x_adv = clip(Pi_eps(S(G(x, k)); x))`` with one generator for all targets (spec §3.6).

    ``attack(images, target_labels)``: ``target_labels`` are class ids (ImageNet ids for the paper
    setting) mapped to generator indices through ``class_ids``; an id outside ``class_ids`` raises
    ``ValueError``. Always targeted.
    """

    name = "esma"

    def __init__(
        self,
        generator: EsmaGenerator,
        class_ids: Sequence[int],
        eps: float = 16 / 255,
        smoothing: bool = True,
    ) -> None:
        class_ids = [int(c) for c in class_ids]
        if len(class_ids) != generator.num_targets:
            raise ValueError(
                f"{len(class_ids)} class ids for a generator with {generator.num_targets} targets"
            )
        if len(set(class_ids)) != len(class_ids):
            raise ValueError(f"class_ids must be distinct, got {class_ids}")
        super().__init__(generator, eps=eps, smoothing=smoothing, targeted=True, conditional=True)
        self.class_ids = class_ids
        self._lookup = {c: i for i, c in enumerate(class_ids)}

    def map_labels(self, labels: Tensor) -> Tensor:
        flat = labels.flatten().tolist()
        bad = sorted({int(c) for c in flat if int(c) not in self._lookup})
        if bad:
            raise ValueError(f"target labels {bad} are not among the generator's classes {self.class_ids}")
        return torch.tensor([self._lookup[int(c)] for c in flat], dtype=torch.long, device=labels.device)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["num_targets"] = len(self.class_ids)
        return d


class EasySampleMatchingLoss:
    """``L_ES = mean_b sum_c SmoothL1(z_bc - m_{t_b, c}) (+ ce_weight * CE(z, t))`` (spec §3.7).

    A loss for :class:`papers_shared.attacks.IterativeAttack` (``loss=EasySampleMatchingLoss(bank)``,
    ``targeted=True``): lower means closer to the target's anchor logits. Labels are class ids of the
    bank. Use banks of kind ``"hard"`` / ``"random"`` for the controls.
    """

    def __init__(self, bank: EasySampleBank, ce_weight: float = 0.0, beta: float = 1.0) -> None:
        self.bank = bank
        self.ce_weight = float(ce_weight)
        self.beta = float(beta)
        self.__name__ = f"es_match[{bank.kind}]"

    def __call__(self, logits: Tensor, target_labels: Tensor) -> Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.bank.anchors.shape[1]:
            raise ValueError(
                f"logits must have shape (B, {self.bank.anchors.shape[1]}), got {tuple(logits.shape)}"
            )
        idx = self.bank.to_index(target_labels.detach().cpu()).to(logits.device)
        anchors = self.bank.anchors.to(device=logits.device, dtype=logits.dtype)[idx]
        loss = F.smooth_l1_loss(logits, anchors, beta=self.beta, reduction="none").sum(dim=1).mean()
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, target_labels.to(logits.device))
        return loss
