"""Weight quantizers: DoReFa (Zhou et al. 2016, Eq. 9) and BWN (Rastegari et al. 2016), as the
official code applies them (two-tiger/FSG @ 9559b30, ``meta_utils/meta_quantized_module.py:MetaQuantConv.forward``): DoReFa and BWN (1 bit by default), their backward paths and the
calibration term ``c = dW~/dW`` used by the meta-gradient update.

Notation (ours): latent full-precision weights ``W``; pre-quantized weights ``W~ = A(W)``;
quantized weights ``W^ = Q(W~)``.

* DoReFa: ``A(W) = tanh(W) / max|tanh(W)| * 1/2 + 1/2`` (the max is a constant for autograd) and
  ``Q(W~) = 2 * round_k(W~) - 1`` with ``round_k(x) = round((2^k - 1) x) / (2^k - 1)``; the
  backward of ``round_k`` is the clipped identity ``1[|x| <= 1]``.
* BWN: ``A(W) = W`` and ``Q(W~) = sign(W~)`` (optionally times ``alpha = mean|W|``, the STE
  baseline's scale) with backward ``1[|W~| <= 1]``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "QUANTIZERS",
    "RoundSTE",
    "SignSTE",
    "calibration",
    "dorefa_preprocess",
    "preprocess",
    "quantize",
]

Quantizer = Literal["dorefa", "bwn"]
QUANTIZERS = ("dorefa", "bwn")


def _check_quantizer(quantizer: str) -> None:
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; use one of {list(QUANTIZERS)}")


class RoundSTE(torch.autograd.Function):
    """``round_k(x)`` forward, clipped straight-through backward ``grad * 1[|x| <= 1]`` (official
    ``meta_utils/meta_quantized_module.py:MetaQuantConv.forward``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        n = float(2**bits - 1)
        return torch.round(x * n) / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype), None


class SignSTE(torch.autograd.Function):
    """``sign(x)`` forward, clipped straight-through backward ``grad * 1[|x| <= 1]`` (BWN, official
    ``meta_utils/meta_quantized_module.py:MetaQuantConv.forward``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def dorefa_preprocess(w: torch.Tensor) -> torch.Tensor:
    """``A(W) = tanh(W) / max|tanh(W)| * 1/2 + 1/2`` in ``[0, 1]``; the max is detached (DoReFa Eq. 9;
    official ``meta_utils/meta_quantized_module.py:MetaQuantConv.forward``)."""
    t = torch.tanh(w)
    return t / t.detach().abs().max().clamp_min(1e-12) * 0.5 + 0.5


def preprocess(w: torch.Tensor, quantizer: Quantizer = "dorefa") -> torch.Tensor:
    """The pre-processing ``A``: DoReFa's tanh normalisation, or the identity for BWN."""
    _check_quantizer(quantizer)
    return dorefa_preprocess(w) if quantizer == "dorefa" else w * 1.0


def quantize(
    w_tilde: torch.Tensor, quantizer: Quantizer = "dorefa", bits: int = 1, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``Q(W~)``: ``2 round_k(W~) - 1`` (DoReFa) or ``sign(W~)`` (BWN, times ``scale`` when given).

    Both use the clipped straight-through backward ``1[|W~| <= 1]``.
    """
    _check_quantizer(quantizer)
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if quantizer == "dorefa":
        return 2.0 * RoundSTE.apply(w_tilde, bits) - 1.0
    if bits != 1:
        raise ValueError(f"BWN is a 1-bit quantizer; got bits={bits}")
    q = SignSTE.apply(w_tilde)
    return q if scale is None else q * scale


def calibration(w: torch.Tensor, quantizer: Quantizer = "dorefa") -> torch.Tensor:
    """Calibration ``c`` from the latent weights (detached), official
    ``meta_utils/meta_quantized_module.py:MetaQuantConv.forward`` (``self.calibration``).

    DoReFa: ``c = (1 - tanh^2(W)) / max|tanh(W)|``. The exact derivative of ``A`` is ``c / 2``; the
    official code drops the factor 1/2 and so do we (it is absorbed by the learned meta nets and by
    Adam's normalisation). BWN: ``c = 1``.
    """
    _check_quantizer(quantizer)
    w = w.detach()
    if quantizer == "bwn":
        return torch.ones_like(w)
    t = torch.tanh(w)
    return (1.0 - t * t) / t.abs().max().clamp_min(1e-12)
