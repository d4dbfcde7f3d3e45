"""MINE analysis of perturbations (spec §3.6, §5 R3) and IB-weight sweeps (spec §7 ablation)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mine import MIEstimate, estimate_mutual_information

__all__ = ["collect_pairs", "perturbation_input_mi", "sweep"]


def _pool(t: Tensor, pool: int) -> Tensor:
    return F.adaptive_avg_pool2d(t, pool).flatten(1)


def collect_pairs(
    attack: Callable[[Tensor, Tensor], Tensor],
    model: nn.Module | None,
    loader: Iterable[Any],
    pool: int = 16,
    variables: str = "delta_x",
) -> tuple[Tensor, Tensor]:
    """Run ``attack`` over ``loader`` (batches ``(images, labels, ...)``) and return the MINE pairs.

    ``variables="delta_x"``: ``A = delta = x_adv - x`` and ``B = x``, both average-pooled to
    ``C x pool x pool`` and flattened. ``variables="logits"``: ``A = model(x_adv)``, ``B = model(x)``.
    """
    if variables not in ("delta_x", "logits"):
        raise ValueError(f"variables must be 'delta_x' or 'logits', got {variables!r}")
    if variables == "logits" and model is None:
        raise ValueError("variables='logits' needs the model")
    if int(pool) < 1:
        raise ValueError(f"pool must be >= 1, got {pool!r}")
    a_parts, b_parts = [], []
    for batch in loader:
        x, y = batch[0], batch[1]
        adv = attack(x, y)
        if variables == "delta_x":
            a_parts.append(_pool(adv - x, pool))
            b_parts.append(_pool(x, pool))
        else:
            with torch.no_grad():
                a_parts.append(model(adv).float().cpu())
                b_parts.append(model(x).float().cpu())
    if not a_parts:
        raise ValueError("loader yielded no batches")
    return torch.cat(a_parts).detach().cpu(), torch.cat(b_parts).detach().cpu()


def perturbation_input_mi(
    attack: Callable[[Tensor, Tensor], Tensor],
    model: nn.Module | None,
    loader: Iterable[Any],
    pool: int = 16,
    variables: str = "delta_x",
    **mine_kwargs: Any,
) -> MIEstimate:
    """MINE estimate of ``I(delta; X)`` (or of the logits of ``x_adv`` and ``x``) for ``attack`` (spec §3.6).

    ``mine_kwargs`` go to :func:`ibta.mine.estimate_mutual_information` (steps, lr, hidden, ...).
    """
    a, b = collect_pairs(attack, model, loader, pool, variables)
    return estimate_mutual_information(a, b, **mine_kwargs)


def sweep(
    build: Callable[..., Callable[[Tensor, Tensor], Tensor]],
    grid: dict[str, Sequence[float]],
    evaluate: Callable[[Callable[[Tensor, Tensor], Tensor]], dict[str, float]],
) -> list[dict[str, float]]:
    """One-at-a-time sweep: for every ``name, values`` of ``grid`` and every value, ``evaluate(build(name=value))``.

    Returns rows ``{"param": name, "value": v, **metrics}`` (the lambda / gamma / sigma ablation of spec §7).
    """
    rows: list[dict[str, Any]] = []
    for name, values in grid.items():
        for v in values:
            rows.append({"param": name, "value": float(v), **evaluate(build(**{name: v}))})
    return rows
