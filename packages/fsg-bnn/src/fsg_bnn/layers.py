"""Binarized convolution and linear layers with the look-ahead forward of the meta-gradient methods.

A :class:`BinaryConv2d` / :class:`BinaryLinear` is an ``nn.Conv2d`` / ``nn.Linear`` (same parameters,
same ``state_dict`` keys, so full-precision checkpoints load unchanged) whose forward uses the
quantized weights ``W^ = Q(A(W_meta))`` (official ``meta_utils/meta_quantized_module.py:MetaQuantConv.forward``, two-tiger/FSG @ 9559b30):

* without a meta optimizer attached, ``W_meta = W`` and the layer is the STE baseline (official
  ``train_baseline_quant.py``);
* with a meta optimizer attached (``layer.controller``), in training mode with autograd enabled the
  optimizer supplies the differentiable look-ahead ``W_meta`` (FSG: ``W - eta (alpha G_slow +
  (1 - alpha) c * G_fast)``; MetaQuant: ``W - eta (c * G + (W.grad_prev - c * G).detach())``) and the
  look-ahead bias ``b - eta b.grad_prev``;
* in evaluation mode the latent ``W`` is used (official ``meta_quantized_module.py:test``).

During a training forward the layer keeps ``pre_quantized`` (``W~``, detached) and registers a hook that
stores ``quantized_grad = dloss/dW^`` (detached) in the backward pass: the inputs of the meta nets.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsg_bnn.quant import QUANTIZERS, preprocess, quantize

__all__ = ["BinaryConv2d", "BinaryLayer", "BinaryLinear", "is_binary_layer"]


class BinaryLayer:
    """Mixin holding the quantizer settings and the state shared with a meta optimizer."""

    quantizer: str
    bits: int
    bwn_scale: bool | None
    layer_name: str
    lre_index: int

    def _init_binary(self, quantizer: str = "dorefa", bits: int = 1, bwn_scale: bool | None = None) -> None:
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {quantizer!r}; use one of {list(QUANTIZERS)}")
        if not isinstance(bits, int) or bits < 1:
            raise ValueError(f"bits must be a positive int, got {bits!r}")
        if quantizer == "bwn" and bits != 1:
            raise ValueError("BWN is a 1-bit quantizer")
        self.quantizer = quantizer
        self.bits = bits
        self.bwn_scale = bwn_scale
        self.layer_name = ""
        self.lre_index = -1
        self._controller_ref: Any = None
        self.pre_quantized: torch.Tensor | None = None
        self.quantized_grad: torch.Tensor | None = None

    # -- meta optimizer attachment -------------------------------------------------------------
    @property
    def controller(self):
        """The meta optimizer driving this layer's look-ahead, or ``None`` (STE mode)."""
        return self._controller_ref() if self._controller_ref is not None else None

    def attach(self, controller) -> None:
        """Attach a meta optimizer (held through a weak reference)."""
        if self.controller is not None and self.controller is not controller:
            raise RuntimeError(
                f"layer {self.layer_name!r} is already driven by another meta optimizer; "
                "call detach() on it first (one meta optimizer per model)"
            )
        self._controller_ref = weakref.ref(controller)

    def detach_controller(self) -> None:
        self._controller_ref = None

    def __getstate__(self):  # weak references do not pickle/deepcopy: drop the attachment
        state = self.__dict__.copy()
        state["_controller_ref"] = None
        return state

    # -- forward pieces ------------------------------------------------------------------------
    def _record(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def binary_weight(self) -> torch.Tensor:
        """``W^ = Q(A(W_meta))`` (look-ahead forward); records ``W~`` and hooks ``dloss/dW^``."""
        ctrl = self.controller
        record = self._record()
        w = self.weight
        if record and ctrl is not None:
            w = ctrl.lookahead_weight(self)
        w_tilde = preprocess(w, self.quantizer)
        scale = None
        if self.quantizer == "bwn":
            use_scale = self.bwn_scale if self.bwn_scale is not None else ctrl is None
            if use_scale:
                scale = self.weight.detach().abs().mean()
        w_hat = quantize(w_tilde, self.quantizer, self.bits, scale)
        if record:
            self.pre_quantized = w_tilde.detach()
            if w_hat.requires_grad:
                w_hat.register_hook(self._save_quantized_grad)
        return w_hat

    def _save_quantized_grad(self, grad: torch.Tensor) -> None:
        self.quantized_grad = grad.detach()

    def effective_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        ctrl = self.controller
        if ctrl is not None and self._record():
            return ctrl.lookahead_bias(self)
        return self.bias

    def extra_binary_repr(self) -> str:
        return f"quantizer={self.quantizer}, bits={self.bits}"


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """``nn.Conv2d`` with binarized weights and the meta look-ahead forward (official
    ``meta_quantized_module.py:MetaQuantConv``)."""

    def __init__(self, *args, quantizer: str = "dorefa", bits: int = 1, bwn_scale: bool | None = None, **kw):
        nn.Conv2d.__init__(self, *args, **kw)
        self._init_binary(quantizer, bits, bwn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.binary_weight(), self.effective_bias()
        if self.padding_mode != "zeros":
            return self._conv_forward(x, w, b)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return nn.Conv2d.extra_repr(self) + ", " + self.extra_binary_repr()


class BinaryLinear(BinaryLayer, nn.Linear):
    """``nn.Linear`` with binarized weights and the meta look-ahead forward (official
    ``meta_quantized_module.py:MetaQuantLinear``)."""

    def __init__(self, *args, quantizer: str = "dorefa", bits: int = 1, bwn_scale: bool | None = None, **kw):
        nn.Linear.__init__(self, *args, **kw)
        self._init_binary(quantizer, bits, bwn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + ", " + self.extra_binary_repr()


def is_binary_layer(module: nn.Module) -> bool:
    return isinstance(module, BinaryLayer)
