"""The ESMA attack and the easy-sample-matching loss plug-in for iterative attacks.

:class:`EsmaAttack` is ``x_adv = clip(Pi_eps(S(G(x, k)); x))`` with one generator for every target
(official ``Train_Gen/transfer_test.py:attack``, gjq100/ESMA commit eff2015): one forward pass, the 3x3
Gaussian smoothing and the projection. Inference options (ours): ``precision="bf16"`` runs the generator
under CPU autocast, or with bf16 weights on CUDA (smoothing and projection stay fp32), and
``compile=True`` runs it through ``torch.compile``.

:class:`EasySampleMatchingLoss` turns an iterative attack into its "+ES" variant (the paper's claim that
moving towards easy samples helps existing attacks; the construction is ours).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from papers_shared.attacks import GenerativeAttack

from .generator import EsmaGenerator
from .screening import EasySampleBank

__all__ = ["EasySampleMatchingLoss", "EsmaAttack", "InferenceGenerator", "cpu_has_native_bf16"]

PRECISIONS = ("fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (AVX512-BF16 / AMX). Without it, bf16
    autocast sends every convolution to PyTorch's slow reference path: measured 36x slower than fp32 for
    the default generator on an AVX2 CPU (README)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class InferenceGenerator(nn.Module):
    """``G(x, k)`` for inference at a chosen precision, optionally compiled; returns fp32 images.

    ``precision="bf16"``: CPU autocast (convolutions and matrix products in bf16, normalisations in
    fp32), or on CUDA a bf16 copy of the weights fed bf16 images (refreshed when the weights change).
    ``compile=True``: the generator body goes through ``torch.compile(backend=compile_backend,
    fullgraph=True)`` (compiled on the first call of each input shape; on CPU the default inductor backend
    needs a C++ compiler and takes minutes on two cores). Input checks run eagerly.
    """

    def __init__(
        self,
        generator: EsmaGenerator,
        precision: str = "fp32",
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.generator = generator
        self.precision = precision
        self.compile = bool(compile)
        self.compile_backend = compile_backend
        self._copy: EsmaGenerator | None = None
        self._copy_version: tuple[int, ...] | None = None
        self._compiled: dict[int, Any] = {}
        self._warned = False

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.generator.parameters())

    def _bf16_copy(self) -> EsmaGenerator:
        version = self._versions()
        if self._copy is None or version != self._copy_version:
            self._copy = copy.deepcopy(self.generator).to(torch.bfloat16).eval()
            self._copy_version = version
            self._compiled.pop(id(self._copy), None)
        return self._copy

    def _body(self, gen: EsmaGenerator):
        if not self.compile:
            return gen.body
        if id(gen) not in self._compiled:
            self._compiled = {
                id(gen): torch.compile(gen.body, dynamic=False, fullgraph=True, backend=self.compile_backend)
            }
        return self._compiled[id(gen)]

    def forward(self, x: Tensor, target_idx: Tensor) -> Tensor:
        self.generator.check_inputs(x, target_idx)
        if self.precision == "fp32":
            return self._body(self.generator)(x, target_idx)
        if x.device.type == "cuda":
            gen = self._bf16_copy()
            return self._body(gen)(x.to(torch.bfloat16), target_idx).float()
        if x.device.type == "cpu" and not self._warned and not cpu_has_native_bf16():
            self._warned = True
            warnings.warn(
                "precision='bf16' on a CPU without native bf16 (AVX512-BF16 / AMX): convolutions run on "
                "PyTorch's slow path, many times slower than fp32; use precision='fp32' on this CPU",
                RuntimeWarning,
                stacklevel=3,
            )
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self._body(self.generator)(x, target_idx)
        return out.float()


class EsmaAttack(GenerativeAttack):
    """``x_adv = clip(Pi_eps(S(G(x, k)); x))`` with one generator for all targets.

    ``attack(images, target_labels)``: ``target_labels`` are class ids (ImageNet ids for the paper
    setting) mapped to generator indices through ``class_ids``; an id outside ``class_ids`` raises
    ``ValueError``. Always targeted. ``precision`` / ``compile`` choose how the generator runs at
    inference (:class:`InferenceGenerator`); :meth:`perturb` (differentiable) always runs it in fp32.
    """

    name = "esma"

    def __init__(
        self,
        generator: EsmaGenerator,
        class_ids: Sequence[int],
        eps: float = 16 / 255,
        smoothing: bool = True,
        precision: Literal["fp32", "bf16"] = "fp32",
        compile: bool = False,
        compile_backend: str = "inductor",
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
        self.inference = InferenceGenerator(generator, precision, compile, compile_backend)

    @property
    def precision(self) -> str:
        return self.inference.precision

    def map_labels(self, labels: Tensor) -> Tensor:
        flat = labels.flatten().tolist()
        bad = sorted({int(c) for c in flat if int(c) not in self._lookup})
        if bad:
            raise ValueError(f"target labels {bad} are not among the generator's classes {self.class_ids}")
        return torch.tensor([self._lookup[int(c)] for c in flat], dtype=torch.long, device=labels.device)

    def __call__(self, images: Tensor, labels: Tensor | int | None = None) -> Tensor:
        if self.inference.precision == "fp32" and not self.inference.compile:
            return super().__call__(images, labels)
        self.inference.train(self.generator.training)  # restored to the generator's mode afterwards
        plain, self.generator = self.generator, self.inference
        try:
            return super().__call__(images, labels)
        finally:
            self.generator = plain

    def _device(self, fallback: torch.device) -> torch.device:
        gen = self.generator.generator if isinstance(self.generator, InferenceGenerator) else self.generator
        for p in gen.parameters():
            return p.device
        return fallback

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(num_targets=len(self.class_ids), precision=self.precision, compile=self.inference.compile)
        return d


class EasySampleMatchingLoss:
    """``L_ES = mean_b sum_c SmoothL1(z_bc - m_{t_b, c}) (+ ce_weight * CE(z, t))`` (ours).

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
