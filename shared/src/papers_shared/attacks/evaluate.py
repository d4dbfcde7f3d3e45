"""Evaluation of adversarial examples: success rates, distances and transfer matrices.

Every row produced by :func:`transfer_matrix` names its protocol (TTP issue #2 documents how easily
"sub-source", "all-source" and NIPS'17 numbers get mixed up), the budget, the number of steps, and
the weights and preprocessing of both models (weight versions change transfer numbers).

Protocols (:data:`PROTOCOLS`):

* ``"ttp-sub-source"`` -- the 10 TTP targets; per target, the val images of the other 9 target
  classes (450 images), success = ``argmax == t`` (the TTP protocol, Naseer et al., ICCV 2021, used
  by ESMA, Gao et al., NeurIPS 2023);
* ``"ibta-sub-source"`` -- the same construction on IBTA's 10 classes (``transfer.py:advtest`` of the
  IBTA official code, commit 6866b7a);
* ``"nips17"`` -- the 1000-image NIPS'17 dev set with its per-image targets;
* ``"all-source"`` -- per target, every val image not of that class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_images, check_labels

__all__ = [
    "PROTOCOLS",
    "l2_distance",
    "linf_distance",
    "mean_over_targets",
    "success_rate",
    "transfer_matrix",
]

PROTOCOLS = ("ttp-sub-source", "ibta-sub-source", "nips17", "all-source")


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return fallback


def _count_success(
    model: nn.Module, adv: Tensor, labels: Tensor, targeted: bool, batch_size: int
) -> tuple[int, int]:
    device = _model_device(model, adv.device)
    hits = 0
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, adv.shape[0], batch_size):
                xb = adv[start : start + batch_size].to(device)
                yb = labels[start : start + batch_size].to(device)
                pred = model(xb).argmax(dim=1)
                hits += int((pred == yb).sum() if targeted else (pred != yb).sum())
    finally:
        if isinstance(model, nn.Module) and was_training:
            model.train()
    return hits, int(adv.shape[0])


def success_rate(
    model: nn.Module, adv: Tensor, labels: Tensor, targeted: bool, batch_size: int = 256
) -> float:
    """Fraction of ``adv`` classified as ``labels`` (targeted) or not as ``labels`` (untargeted).

    The model runs in eval mode under ``torch.no_grad`` in batches of ``batch_size``; its training
    flag is restored afterwards.
    """
    adv = check_images(adv, "adv")
    labels = check_labels(labels, adv.shape[0], adv.device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if adv.shape[0] == 0:
        raise ValueError("success_rate of an empty batch is undefined")
    hits, n = _count_success(model, adv, labels, targeted, batch_size)
    return hits / n


def linf_distance(adv: Tensor, x: Tensor) -> Tensor:
    """Per-sample ``max |adv - x|``."""
    if adv.shape != x.shape:
        raise ValueError(f"shape mismatch: {tuple(adv.shape)} vs {tuple(x.shape)}")
    return (adv - x).flatten(1).abs().amax(dim=1)


def l2_distance(adv: Tensor, x: Tensor) -> Tensor:
    """Per-sample ``||adv - x||_2``."""
    if adv.shape != x.shape:
        raise ValueError(f"shape mismatch: {tuple(adv.shape)} vs {tuple(x.shape)}")
    return (adv - x).flatten(1).norm(p=2, dim=1)


def _batches(data: Any) -> Iterator[tuple[Tensor, ...]]:
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        yield data
        return
    if iter(data) is data:
        raise ValueError(
            "data must be re-iterable (a DataLoader, list of batches or a single tuple), not an iterator"
        )
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError("each batch must be (images, labels) or (images, labels, targets)")
        yield tuple(batch)


def _meta(model: nn.Module, key: str) -> str:
    return str(getattr(model, key, "unknown"))


def transfer_matrix(
    sources: Mapping[str, nn.Module],
    victims: Mapping[str, nn.Module],
    attack_factory: Callable[[nn.Module], Any],
    data: Iterable[Any],
    *,
    protocol: str,
    targets: Sequence[int] | None = None,
    attack_name: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    include_white_box: bool = True,
    eval_batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Attack every source model and score the adversarial images on every victim.

    Args:
        sources, victims: name -> model (taking [0, 1] images).
        attack_factory: ``source_model -> attack``; the attack is called as ``attack(images, labels)``.
            Generative attacks ignore the source model.
        data: batches ``(images, labels)`` or ``(images, labels, targets)`` (DataLoader, list, or a
            single tuple of tensors).
        protocol: one of :data:`PROTOCOLS`.
        targets: for the sub-source / all-source protocols, the target classes: for each target the
            images whose label equals it are dropped and the rest are attacked towards it (one row
            per target). ``None`` with 3-tuples: per-image targets (NIPS'17). ``None`` with pairs:
            the labels are targets if ``attack.targeted``, else true labels (untargeted).
        attack_name, eps, steps: recorded in the rows (default: taken from the attack object).
        include_white_box: also score the source model on its own examples.

    Returns:
        rows ``{protocol, source, victim, attack, targeted, target, eps, steps, n, successes,
        success, white_box, source_weights, victim_weights, source_preprocessing,
        victim_preprocessing}``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not sources or not victims:
        raise ValueError("sources and victims must be non-empty mappings name -> model")
    if targets is not None and len(targets) == 0:
        raise ValueError("targets must be None or a non-empty sequence of class ids")
    rows: list[dict[str, Any]] = []
    target_list: list[int | None] = list(targets) if targets is not None else [None]
    for src_name, src_model in sources.items():
        attack = attack_factory(src_model)
        name = attack_name or getattr(attack, "name", type(attack).__name__)
        a_eps = eps if eps is not None else getattr(attack, "eps", None)
        a_steps = steps if steps is not None else getattr(attack, "steps", None)
        for target in target_list:
            counts: dict[str, list[int]] = {}
            victim_items = [(k, v) for k, v in victims.items() if include_white_box or k != src_name]
            if include_white_box and src_name not in victims:
                victim_items.append((src_name, src_model))
            targeted = target is not None or bool(getattr(attack, "targeted", False))
            for batch in _batches(data):
                images, labels = batch[0], batch[1]
                if target is not None:
                    keep = labels != target
                    if not bool(keep.any()):
                        continue
                    images = images[keep]
                    goal = torch.full_like(labels[keep], int(target))
                elif len(batch) == 3:
                    goal, targeted = batch[2], True
                else:
                    goal = labels
                adv = attack(images, goal)
                for v_name, v_model in victim_items:
                    hits, n = _count_success(v_model, adv, goal, targeted, eval_batch_size)
                    c = counts.setdefault(v_name, [0, 0])
                    c[0] += hits
                    c[1] += n
            for v_name, v_model in victim_items:
                hits, n = counts.get(v_name, [0, 0])
                rows.append(
                    {
                        "protocol": protocol,
                        "source": src_name,
                        "victim": v_name,
                        "attack": name,
                        "targeted": targeted,
                        "target": target,
                        "eps": a_eps,
                        "steps": a_steps,
                        "n": n,
                        "successes": hits,
                        "success": hits / n if n else float("nan"),
                        "white_box": v_name == src_name,
                        "source_weights": _meta(src_model, "weights_source"),
                        "victim_weights": _meta(v_model, "weights_source"),
                        "source_preprocessing": _meta(src_model, "preprocessing"),
                        "victim_preprocessing": _meta(v_model, "preprocessing"),
                    }
                )
    return rows


def mean_over_targets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average ``success`` over targets for each (protocol, source, victim, attack) group.

    The result rows keep the shared fields, set ``target`` to ``"mean"`` and add ``num_targets``;
    ``n`` and ``successes`` are summed. This is the headline number of the sub-source protocols.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        key = (r["protocol"], r["source"], r["victim"], r["attack"], r["targeted"], r["eps"], r["steps"])
        groups.setdefault(key, []).append(r)
    out: list[dict[str, Any]] = []
    for members in groups.values():
        first = dict(members[0])
        vals = [float(m["success"]) for m in members]
        first.update(
            target="mean",
            num_targets=len(members),
            n=sum(int(m["n"]) for m in members),
            successes=sum(int(m["successes"]) for m in members),
            success=sum(vals) / len(vals),
        )
        out.append(first)
    return out
