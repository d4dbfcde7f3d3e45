"""MINE analysis of perturbations and IB-weight sweeps (ours: the paper's motivation is that IBTA lowers
the information the perturbation carries about the input, I(delta; X); the official repository has no
MINE code, so which variables the paper measures is not known to us)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mine import MIEstimate, estimate_mutual_information

__all__ = ["collect_pairs", "mine_for_config", "perturbation_input_mi", "sweep"]


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
    """MINE estimate of ``I(delta; X)`` (or of the logits of ``x_adv`` and ``x``) for ``attack``.

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

    Returns rows ``{"param": name, "value": v, **metrics}`` (a lambda / gamma / sigma ablation).
    """
    rows: list[dict[str, Any]] = []
    for name, values in grid.items():
        for v in values:
            rows.append({"param": name, "value": float(v), **evaluate(build(**{name: v}))})
    return rows


def mine_for_config(cfg: Any, attack: str, source: str | None = None) -> dict[str, Any]:
    """``ibta mine``: MINE estimate for attack ``attack`` on ``source`` (default: the first source) over the
    untargeted data of ``cfg`` (an :class:`~ibta.config.ExperimentConfig`), with the ``cfg.mine`` settings."""
    from papers_shared.device import get_device

    from .data import batch_blocks, build_data, digits_data, load_batches
    from .experiment import build_attack
    from .models import build_model, read_weights

    weights = read_weights(cfg)
    digits = digits_data(cfg.digits) if cfg.dataset == "digits" else None
    name = source or cfg.sources[0]
    model = build_model(name, cfg, get_device(cfg.device), {}, weights, digits)
    ds, _, _ = build_data(cfg, targeted=False)
    loader = load_batches(ds, batch_blocks(len(ds), cfg.batch_size))
    m = cfg.mine
    est = perturbation_input_mi(
        build_attack(attack, model, cfg.attack, targeted=False),
        model,
        loader,
        pool=m.pool,
        variables=m.variables,
        steps=m.steps,
        batch_size=m.batch_size,
        lr=m.lr,
        hidden=m.hidden,
        depth=m.depth,
        ema_rate=m.ema_rate,
        eval_every=m.eval_every,
        average_last=m.average_last,
        holdout_frac=m.holdout_frac,
        seed=m.seed,
    )
    return {"attack": attack, "source": name, "variables": m.variables, "mi_nats": est.value}
