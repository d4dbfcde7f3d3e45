"""Pure tensor functions of OFS-DPO (no trl import).

Notation (DPO, Rafailov et al. 2023): ``lr(θ; x, y) = log π_θ(y|x) − log π_ref(y|x)`` (sequence log-prob summed over the
completion tokens), the implicit-reward margin ``h_θ = β·(lr(θ; x, y_w) − lr(θ; x, y_l))`` and the
preference probability ``σ(h_θ)``. Batches are stacked ``[chosen…; rejected…]`` along dim 0, as trl's
``DataCollatorForPreference`` produces them.

Every public function validates shapes and dtypes; with ``validate=True`` (the default) it also rejects
NaN/inf inputs. The trainer calls them with ``validate=False`` and handles non-finite steps itself
(``skip_nonfinite_steps``; ours).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CHASE_MODES",
    "SUPPORTED_LOSS_TYPES",
    "OFSObjectives",
    "chase_loss",
    "dpo_grad_weight",
    "dpo_loss",
    "dpo_margins",
    "ofs_objectives",
    "preference_loss",
    "sequence_logps",
    "token_logps_to_sequence",
]

CHASE_MODES = ("minmax", "pull")
SUPPORTED_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


def _check_float(x: torch.Tensor, name: str, ndim: int | None = None, validate: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if validate and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def token_logps_to_sequence(
    per_token_logps: torch.Tensor,
    shift_completion_mask: torch.Tensor,
    ld_alpha: float | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Sum per-token log-probs over the completion (trl's reduction, including its LD-DPO option).

    ``per_token_logps`` and ``shift_completion_mask`` are ``(2B, T-1)``: position ``t`` scores token ``t+1``.
    Masked positions must already be 0 in ``per_token_logps`` or are zeroed here. With ``ld_alpha`` set
    (LD-DPO), tokens beyond the shorter of the chosen/rejected completion are weighted by ``ld_alpha``.
    """
    _check_float(per_token_logps, "per_token_logps", ndim=2, validate=validate)
    if shift_completion_mask.shape != per_token_logps.shape:
        raise ValueError(
            f"shift_completion_mask shape {tuple(shift_completion_mask.shape)} differs from per_token_logps "
            f"shape {tuple(per_token_logps.shape)}"
        )
    mask = shift_completion_mask.to(per_token_logps.dtype)
    per_token_logps = per_token_logps * mask
    if ld_alpha is None:
        return per_token_logps.sum(dim=1)
    if per_token_logps.size(0) % 2:
        raise ValueError("ld_alpha needs a stacked [chosen; rejected] batch with an even number of rows")
    comp_pos = shift_completion_mask.cumsum(dim=1)
    comp_lens = shift_completion_mask.sum(dim=1).long()
    chosen_lens, rejected_lens = comp_lens.chunk(2, dim=0)
    shared = torch.minimum(chosen_lens, rejected_lens)
    shared = torch.cat([shared, shared], dim=0).unsqueeze(1)
    shared_mask = ((comp_pos > 0) & (comp_pos <= shared)).to(per_token_logps.dtype)
    tail_mask = (comp_pos > shared).to(per_token_logps.dtype)
    return (per_token_logps * shared_mask).sum(dim=1) + ld_alpha * (per_token_logps * tail_mask).sum(dim=1)


def sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor, validate: bool = True
) -> torch.Tensor:
    """Summed completion log-probs ``log π(y|x)`` per row from full logits (ours).

    ``logits``: ``(N, T, V)``; ``input_ids`` and ``completion_mask``: ``(N, T)``. Token ``t+1`` is scored by
    the logits at position ``t``; only completion tokens count. Returns ``(N,)``.
    """
    _check_float(logits, "logits", ndim=3, validate=validate)
    if input_ids.shape != logits.shape[:2] or completion_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and completion_mask {tuple(completion_mask.shape)} must match "
            f"logits' first two dims {tuple(logits.shape[:2])}"
        )
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    labels = input_ids[:, 1:].long()
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return token_logps_to_sequence(logp, completion_mask[:, 1:], validate=False)


def dpo_margins(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float, validate: bool = True
) -> torch.Tensor:
    """``h = β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]`` (DPO's implicit reward, Rafailov et al. 2023 Eq. 5).

    Both inputs are stacked ``(2B,)`` tensors ``[chosen; rejected]``; returns ``(B,)``.
    """
    _check_float(policy_logps, "policy_logps", ndim=1, validate=validate)
    _check_float(ref_logps, "ref_logps", ndim=1, validate=validate)
    _check_same_shape(policy_logps, ref_logps, "policy_logps", "ref_logps")
    if policy_logps.numel() % 2:
        raise ValueError(
            f"stacked [chosen; rejected] log-probs need an even length, got {policy_logps.numel()}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    ratio = policy_logps - ref_logps
    chosen, rejected = ratio.chunk(2, dim=0)
    return beta * (chosen - rejected)


def dpo_loss(h: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """``L_DPO = mean(−log σ(h))`` (Rafailov et al. 2023 Eq. 7; the OFS-DPO paper's Eq. 5)."""
    _check_float(h, "h", ndim=1, validate=validate)
    return -F.logsigmoid(h).mean()


def dpo_grad_weight(h: torch.Tensor) -> torch.Tensor:
    """Per-pair gradient weight ``|∂L_DPO/∂h| = σ(−h)`` that vanishes as margins grow (the paper's Proposition 3.3.1)."""
    _check_float(h, "h", validate=False)
    return torch.sigmoid(-h)


def _clamp(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    if clamp is None:
        return x
    if not clamp > 0:
        raise ValueError(f"chase_margin_clamp must be > 0 or None, got {clamp}")
    return x.clamp(-clamp, clamp)


def chase_loss(
    h_leader: torch.Tensor, h_chaser: torch.Tensor, clamp: float | None = None, validate: bool = True
) -> torch.Tensor:
    """``L_DPO-FS = mean(−log σ(h_L − h_C))`` (the paper's Eq. 6).

    The leader plays the policy and the chaser the reference, so ``π_ref`` cancels; at parity the loss is
    ``log 2``. ``clamp`` bounds ``Δ = h_L − h_C`` to ``[−clamp, clamp]`` (``chase_margin_clamp``).
    """
    _check_float(h_leader, "h_leader", ndim=1, validate=validate)
    _check_float(h_chaser, "h_chaser", ndim=1, validate=validate)
    _check_same_shape(h_leader, h_chaser, "h_leader", "h_chaser")
    return -F.logsigmoid(_clamp(h_leader - h_chaser, clamp)).mean()


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair base preference loss for the loss types OFS-DPO supports (trl's ``loss_type``s that OFS-DPO supports; ours).

    Same formulas as trl's ``DPOTrainer`` for ``sigmoid`` (DPO), ``hinge``, ``ipo`` (length-normalised, as trl)
    and ``robust``. The chase term is always the sigmoid form of the paper's Eq. 6 whatever ``loss_type`` is.
    """
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs the completion lengths")
        ipo = chosen_logratios / chosen_lengths.clamp(min=1.0) - rejected_logratios / rejected_lengths.clamp(
            min=1.0
        )
        return (ipo - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5) for 'robust', got {label_smoothing}")
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    raise ValueError(
        f"loss_type {loss_type!r} is not supported by OFS-DPO; supported: {list(SUPPORTED_LOSS_TYPES)}"
    )


@dataclass
class OFSObjectives:
    """The terms of one OFS-DPO step (the paper's Eq. 3-4). Tensors are scalars unless noted."""

    total: torch.Tensor
    leader_objective: torch.Tensor
    chaser_objective: torch.Tensor
    dpo_fast: torch.Tensor
    dpo_slow: torch.Tensor
    chase: torch.Tensor
    margin_gap: torch.Tensor  # (B,) Δ = h_L − h_C, detached
    grad_weight_dpo: torch.Tensor  # (B,) σ(−h_L), detached
    grad_weight_chase: torch.Tensor  # (B,) |∂L_DPO-FS/∂h_L| = σ(−Δ), detached
    leader: str


def ofs_objectives(
    h_fast: torch.Tensor,
    h_slow: torch.Tensor,
    alpha: float,
    leader: str = "fast",
    mode: str = "minmax",
    clamp: float | None = None,
    base_fast: torch.Tensor | None = None,
    base_slow: torch.Tensor | None = None,
    validate: bool = True,
) -> OFSObjectives:
    """Leader/chaser objectives with stop-gradient routing (the paper's Eq. 3-4).

    - Leader: ``J_L = L_DPO(θ_L) + α·L_DPO-FS(θ_L, sg(θ_C))``.
    - Chaser, ``mode="minmax"``: ``J_C = L_DPO(θ_C) − α·L_DPO-FS(sg(θ_L), θ_C)`` (gradient weight
      ``1 − σ(h_L − h_C)``); ``mode="pull"`` [ours]: ``J_C = L_DPO(θ_C) + α·(−log σ(h_C − sg(h_L)))``
      (gradient weight ``σ(h_L − h_C)``).
    - ``total = J_L + J_C``: thanks to the two ``sg``, θ_L only receives ∂J_L and θ_C only ∂J_C.

    ``base_fast``/``base_slow`` replace the sigmoid DPO losses when another ``loss_type`` is used.
    """
    _check_float(h_fast, "h_fast", ndim=1, validate=validate)
    _check_float(h_slow, "h_slow", ndim=1, validate=validate)
    _check_same_shape(h_fast, h_slow, "h_fast", "h_slow")
    if leader not in ("fast", "slow"):
        raise ValueError(f"leader must be 'fast' or 'slow', got {leader!r}")
    if mode not in CHASE_MODES:
        raise ValueError(f"chase mode must be one of {list(CHASE_MODES)}, got {mode!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"chase alpha must be a finite number >= 0, got {alpha}")
    l_fast = dpo_loss(h_fast, validate=False) if base_fast is None else base_fast
    l_slow = dpo_loss(h_slow, validate=False) if base_slow is None else base_slow
    if leader == "fast":
        h_lead, h_chase, l_lead, l_chase = h_fast, h_slow, l_fast, l_slow
    else:
        h_lead, h_chase, l_lead, l_chase = h_slow, h_fast, l_slow, l_fast
    # Leader widens its lead against a frozen chaser.
    chase_for_leader = chase_loss(h_lead, h_chase.detach(), clamp=clamp, validate=False)
    if mode == "minmax":
        # Chaser maximises the leader's chase loss (leader frozen).
        chase_for_chaser = -chase_loss(h_lead.detach(), h_chase, clamp=clamp, validate=False)
    else:
        chase_for_chaser = chase_loss(h_chase, h_lead.detach(), clamp=clamp, validate=False)
    j_lead = l_lead + alpha * chase_for_leader
    j_chase = l_chase + alpha * chase_for_chaser
    with torch.no_grad():
        gap = (h_lead - h_chase).detach()
        w_dpo = torch.sigmoid(-h_lead.detach())
        w_chase = torch.sigmoid(-_clamp(gap, clamp))
    return OFSObjectives(
        total=j_lead + j_chase,
        leader_objective=j_lead,
        chaser_objective=j_chase,
        dpo_fast=l_fast,
        dpo_slow=l_slow,
        chase=chase_for_leader.detach(),
        margin_gap=gap,
        grad_weight_dpo=w_dpo,
        grad_weight_chase=w_chase,
        leader=leader,
    )


def weights_on_simplex(k: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """All weight vectors of length ``k`` on the simplex grid with spacing ``step`` (COFS ``weights="search"``)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    n = round(1.0 / step)
    if not math.isclose(n * step, 1.0, rel_tol=0, abs_tol=1e-9):
        raise ValueError(f"step must divide 1 exactly, got {step}")

    def rec(remaining: int, parts: int) -> list[list[int]]:
        if parts == 1:
            return [[remaining]]
        return [[i, *rest] for i in range(remaining + 1) for rest in rec(remaining - i, parts - 1)]

    return [tuple(i / n for i in combo) for combo in rec(n, k)]


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Check combination weights (finite, >= 0, positive sum) and rescale them to sum to 1."""
    w = [float(x) for x in weights]
    if not w:
        raise ValueError("combination weights are empty")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"combination weights must be finite and >= 0, got {w}")
    s = sum(w)
    if s <= 0:
        raise ValueError(f"combination weights must have a positive sum, got {w}")
    return [x / s for x in w]


__all__ += ["normalise_weights", "weights_on_simplex"]
