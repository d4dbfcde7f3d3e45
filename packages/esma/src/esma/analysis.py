"""Empirical checks of the ESMA premise (the paper's claim that models agree more on easy samples, and that
moving towards easy target samples helps existing attacks); both measurements are ours.

* :func:`consistency_vs_easiness`: bins samples by the source model's loss (easy -> hard) and reports,
  per bin, the mean cross-model loss gap ``|l_A - l_B|`` and the prediction agreement over all model
  pairs. The premise predicts small gaps and high agreement for easy samples.
* :func:`anchor_ablation`: iterative targeted attacks whose loss matches easy / random / hard anchor
  logits (plus plain CE), scored on victim models.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from papers_shared.attacks import IterativeAttack, success_rate

from .attack import EasySampleMatchingLoss
from .screening import EasySampleBank

__all__ = [
    "ATTACK_PRESETS",
    "anchor_ablation",
    "consistency_vs_easiness",
    "per_sample_losses",
    "targeted_pairs",
]


@torch.no_grad()
def per_sample_losses(models: Sequence[nn.Module], data: Iterable) -> tuple[Tensor, Tensor]:
    """``(losses, preds)`` of shape (M, N): CE and argmax of every model on every sample."""
    losses: list[list[Tensor]] = [[] for _ in models]
    preds: list[list[Tensor]] = [[] for _ in models]
    for m in models:
        m.eval()
    for x, y in data:
        for i, m in enumerate(models):
            z = m(x)
            losses[i].append(F.cross_entropy(z, y, reduction="none"))
            preds[i].append(z.argmax(1))
    return torch.stack([torch.cat(v) for v in losses]), torch.stack([torch.cat(v) for v in preds])


def consistency_vs_easiness(
    models: Sequence[nn.Module], loader: Iterable, source_idx: int = 0, n_bins: int = 10
) -> dict[str, list[float]]:
    """Per source-loss quantile bin (bin 0 = easiest): ``loss_gap`` (mean over model pairs of
    ``|l_A - l_B|``), ``agreement`` (fraction of model pairs with equal predictions), ``source_loss``
    (mean source loss) and ``count``."""
    if len(models) < 2:
        raise ValueError("consistency_vs_easiness needs at least two models")
    if not 0 <= source_idx < len(models):
        raise ValueError(f"source_idx {source_idx} out of range for {len(models)} models")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    losses, preds = per_sample_losses(models, loader)
    n = losses.shape[1]
    if n < n_bins:
        raise ValueError(f"{n} samples cannot fill {n_bins} bins")
    order = torch.argsort(losses[source_idx], stable=True)
    pairs = list(itertools.combinations(range(len(models)), 2))
    gap = torch.stack([(losses[a] - losses[b]).abs() for a, b in pairs]).mean(0)
    agree = torch.stack([(preds[a] == preds[b]).float() for a, b in pairs]).mean(0)
    out: dict[str, list[float]] = {"loss_gap": [], "agreement": [], "source_loss": [], "count": []}
    for chunk in torch.tensor_split(order, n_bins):
        out["loss_gap"].append(float(gap[chunk].mean()))
        out["agreement"].append(float(agree[chunk].mean()))
        out["source_loss"].append(float(losses[source_idx][chunk].mean()))
        out["count"].append(float(chunk.numel()))
    return out


def targeted_pairs(
    x: Tensor, y: Tensor, targets: Sequence[int], per_target: int | None = None
) -> tuple[Tensor, Tensor]:
    """Sub-source construction: for each target, the images not of that class (first ``per_target``)."""
    xs, ts = [], []
    for t in targets:
        keep = torch.nonzero(y != t).flatten()
        if per_target:
            keep = keep[:per_target]
        xs.append(x[keep])
        ts.append(torch.full((keep.numel(),), int(t), dtype=torch.long))
    return torch.cat(xs), torch.cat(ts)


ATTACK_PRESETS = {
    # name: IterativeAttack switches (DI p 0.7, TI kernel 5 as in the Logit attack of Zhao et al., NeurIPS 2021;
    # Logit keeps the raw TI gradient)
    "mi": {"mi": True},
    "dtmi": {"mi": True, "di": True, "ti": True},
    "logit": {"mi": True, "di": True, "ti": True, "normalize_grad": False},
}


def anchor_ablation(
    source: nn.Module,
    victims: Mapping[str, nn.Module],
    banks: Mapping[str, EasySampleBank],
    x: Tensor,
    targets: Tensor,
    eps: float = 0.2,
    alpha: float = 0.02,
    steps: int = 50,
    include_ce: bool = True,
    batch_size: int = 1024,
    attack: str = "mi",
    seed: int | None = 0,
) -> dict[str, dict[str, Any]]:
    """Targeted iterative attack (``attack`` in :data:`ATTACK_PRESETS`) with
    ``EasySampleMatchingLoss(bank)`` for every bank (plus the preset's own loss: CE, or the logit loss
    for ``"logit"``), scored as targeted success on ``source`` (white box) and every victim:
    ``{kind: {model_name: rate}}``."""
    if attack not in ATTACK_PRESETS:
        raise ValueError(f"attack must be one of {sorted(ATTACK_PRESETS)}, got {attack!r}")
    if x.shape[0] != targets.shape[0]:
        raise ValueError("x and targets must have the same length")
    losses: dict[str, Any] = {k: EasySampleMatchingLoss(b) for k, b in banks.items()}
    if include_ce:
        losses["ce"] = "logit" if attack == "logit" else "ce"
    out: dict[str, dict[str, Any]] = {}
    for kind, loss in losses.items():
        atk = IterativeAttack(
            source,
            eps=eps,
            alpha=alpha,
            steps=steps,
            targeted=True,
            loss=loss,
            seed=seed,
            **ATTACK_PRESETS[attack],
        )
        adv = torch.cat(
            [atk(x[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )
        row = {"source": success_rate(source, adv, targets, targeted=True)}
        for name, v in victims.items():
            row[name] = success_rate(v, adv, targets, targeted=True)
        out[kind] = row
    return out
