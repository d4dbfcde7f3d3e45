"""The ESMA attack and the easy-sample-matching loss plug-in for iterative attacks.

:class:`EsmaAttack` is ``x_adv = clip(Pi_eps(S(G(x, k)); x))`` with one generator for every target
(official ``Train_Gen/transfer_test.py:attack``, gjq100/ESMA commit eff2015): one forward pass, the 3x3
Gaussian smoothing and the projection. Inference options (ours): ``precision="bf16"`` runs the generator
under autocast or from a cached bf16 copy of its weights (``bf16_mode``; by default autocast on CPU, the
copy on CUDA; smoothing and projection stay fp32), ``channels_last=True`` runs it in channels-last memory
format, and ``compile=True`` runs it through ``torch.compile``.

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
BF16_MODES = ("auto", "autocast", "weights")
Bf16Mode = Literal["auto", "autocast", "weights"]


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (AVX512-BF16 / AMX). Without it, bf16
    autocast sends every convolution to PyTorch's slow reference path: measured 36x slower than fp32 for
    the default generator on an AVX2 CPU (README)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class InferenceGenerator(nn.Module):
    """``G(x, k)`` for inference at a chosen precision, optionally compiled; returns fp32 images (ours).

    ``precision="bf16"`` runs in one of two ways, chosen by ``bf16_mode``:

    * ``"autocast"``: the fp32 generator under ``torch.autocast(device, bfloat16)``: convolutions,
      linear layers and matrix products cast their weights and inputs to bf16 on every call; on CPU the
      reflection padding is on autocast's fp32 list (each padded activation goes to fp32 and back), and
      GroupNorm / LayerNorm / softmax / GELU run on the bf16 activations with fp32 affine parameters;
    * ``"weights"``: a cached bf16 copy of the generator fed bf16 images: no per-call casts, and
      everything runs in bf16, the normalisations' affine parameters and GCT included (their statistics
      are still accumulated in fp32 inside PyTorch's kernels);
    * ``"auto"`` (default): ``"weights"`` on CUDA, ``"autocast"`` elsewhere.

    The cached copy is rebuilt when a parameter or buffer of the generator changes (an optimiser step,
    ``load_state_dict``, any in-place update under ``no_grad``, a replaced parameter); an update that
    bypasses autograd's version counter (``p.data.add_(...)``) is not seen: call :meth:`refresh` then.
    ``channels_last=True`` runs from a cached copy (fp32 or bf16, as the mode needs) in
    ``torch.channels_last`` memory format and converts the input to it as well.
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
        bf16_mode: Bf16Mode = "auto",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if bf16_mode not in BF16_MODES:
            raise ValueError(f"bf16_mode must be one of {BF16_MODES}, got {bf16_mode!r}")
        self.generator = generator
        self.precision = precision
        self.bf16_mode = bf16_mode
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self.compile_backend = compile_backend
        self._copy: EsmaGenerator | None = None
        self._copy_key: tuple | None = None
        self._compiled: dict[int, Any] = {}
        self._warned = False

    def _state_key(self) -> tuple:
        tensors = [*self.generator.parameters(), *self.generator.buffers()]
        return tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)

    def refresh(self) -> None:
        """Drop the cached copy: the next call rebuilds it from the generator's current weights."""
        self._copy = None
        self._copy_key = None

    def mode(self, device: torch.device) -> str:
        """How a call on ``device`` runs: ``"fp32"``, ``"autocast"`` or ``"weights"`` (bf16 copy)."""
        if self.precision == "fp32":
            return "fp32"
        if self.bf16_mode == "auto":
            return "weights" if device.type == "cuda" else "autocast"
        return self.bf16_mode

    def _cached_copy(self, dtype: torch.dtype) -> EsmaGenerator:
        key = (self._state_key(), dtype, self.channels_last)
        if self._copy is None or key != self._copy_key:
            gen = copy.deepcopy(self.generator).to(dtype).eval()
            if self.channels_last:
                gen = gen.to(memory_format=torch.channels_last)
            self._copy, self._copy_key = gen, key
            self._compiled.clear()
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
        mode = self.mode(x.device)
        if mode != "fp32" and x.device.type == "cpu" and not self._warned and not cpu_has_native_bf16():
            self._warned = True
            warnings.warn(
                "precision='bf16' on a CPU without native bf16 (AVX512-BF16 / AMX): convolutions run on "
                "PyTorch's slow path, many times slower than fp32; use precision='fp32' on this CPU",
                RuntimeWarning,
                stacklevel=3,
            )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if mode == "weights":
            gen = self._cached_copy(torch.bfloat16)
            out = self._body(gen)(x.to(torch.bfloat16, memory_format=fmt), target_idx).float()
            return out.contiguous()
        gen = self._cached_copy(torch.float32) if self.channels_last else self.generator
        x = x.contiguous(memory_format=fmt)
        if mode == "fp32":
            return self._body(gen)(x, target_idx).contiguous()
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self._body(gen)(x, target_idx)
        return out.float().contiguous()


class EsmaAttack(GenerativeAttack):
    """``x_adv = clip(Pi_eps(S(G(x, k)); x))`` with one generator for all targets.

    ``attack(images, target_labels)``: ``target_labels`` are class ids (ImageNet ids for the paper
    setting) mapped to generator indices through ``class_ids``; an id outside ``class_ids`` raises
    ``ValueError``. Always targeted. ``precision`` / ``bf16_mode`` / ``channels_last`` / ``compile``
    choose how the generator runs at inference (:class:`InferenceGenerator`); :meth:`perturb`
    (differentiable) always runs the generator itself in fp32.
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
        bf16_mode: Bf16Mode = "auto",
        channels_last: bool = False,
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
        self.inference = InferenceGenerator(
            generator, precision, compile, compile_backend, bf16_mode=bf16_mode, channels_last=channels_last
        )

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
        inf = self.inference
        if inf.precision == "fp32" and not inf.compile and not inf.channels_last:
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
        inf = self.inference
        d.update(
            num_targets=len(self.class_ids),
            precision=self.precision,
            bf16_mode=inf.bf16_mode,
            channels_last=inf.channels_last,
            compile=inf.compile,
        )
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
