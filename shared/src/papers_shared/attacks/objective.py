"""Objective-family presets: a different loss on the same DI-TI-MI loop.

The Logit attack (loss ``-z_t``) and Po+Trip (Poincare distance plus a triplet term), both in the
DI-TI-MI, 300-iteration setting of Zhao et al. (NeurIPS 2021). The losses live in :mod:`.losses`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .engine import IterativeAttack
from .registry import register_preset

__all__ = ["LogitAttack", "PoTrip"]


@register_preset("logit")
class LogitAttack(IterativeAttack):
    """Logit attack (Zhao et al., "On Success and Simplicity: A Second Look at Transferable Targeted
    Attacks", NeurIPS 2021): DI-TI-MI with the loss ``-z_t``, 300 iterations, alpha 2/255.

    As in the authors' code, momentum accumulates the TI-smoothed gradient without the L1-mean
    normalisation (``normalize_grad=False``); the IBTA official code normalises (pass
    ``normalize_grad=True``).
    """

    name = "logit"
    reference = "Zhao et al., NeurIPS 2021"
    defaults = {"steps": 300, "loss": "logit", "di": True, "ti": True, "mi": True, "normalize_grad": False}


@register_preset("po_trip")
class PoTrip(IterativeAttack):
    """Po+Trip targeted attack (Li et al., "Towards Transferable Targeted Attack", CVPR 2020)
    in the DI-TI-MI / 300-iteration setting of Zhao et al. (NeurIPS 2021).

    Pass the clean labels as ``attack(images, targets, true_labels=y)`` for the triplet term; when
    omitted, the surrogate's clean predictions are used. ``margin``, ``weight`` and ``triplet`` are
    forwarded to :func:`~papers_shared.attacks.losses.po_trip`. The loss is always Po+Trip.
    """

    name = "po_trip"
    reference = "Li et al., CVPR 2020"
    defaults = {
        "steps": 300,
        "targeted": True,
        "loss": "po_trip",
        "di": True,
        "ti": True,
        "mi": True,
        "normalize_grad": False,
    }

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        margin: float = 0.007,
        weight: float = 0.01,
        triplet: str = "paper",
        **kwargs: Any,
    ) -> None:
        if triplet not in ("paper", "zhao_code"):
            raise ValueError(f"triplet must be 'paper' or 'zhao_code', got {triplet!r}")
        kwargs["loss"] = "po_trip"
        super().__init__(model, *args, **kwargs)
        if not self.targeted:
            raise ValueError("PoTrip is a targeted attack: use targeted=True")
        self.po_trip_kwargs = {"margin": float(margin), "weight": float(weight), "triplet": triplet}

    def setup(self, x: Tensor, labels: Tensor) -> None:
        if self.state is not None and self.state.true_labels is None:
            with torch.no_grad():
                self.state.true_labels = self.forward(x).argmax(dim=1)
