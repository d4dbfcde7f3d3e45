"""Fast inference with decoupled memory: which memory region answers a test image (ours; the paper
describes the small model answering from its STM/LTM regions without a task id).

Every region ``r`` reads the image with its own adapter (``h_r = f_{theta + dW_r}(x)``) and its own head
(``z_r = P_r h_r + b_r``). Three rules choose the answer:

* ``nearest_prototype`` (default): compare like with like. For a Euclidean head
  ``z_r,c - ||h_r||^2 / 2 = -||h_r - p_c||^2 / 2`` (exact when the rows are class means), a score that
  does not depend on the number of classes of the region; for a cosine head ``z_r,c`` itself
  (``cos(h_r, p_c) / tau``) is already comparable. The answer is the best class over all regions;
  its candidates for the large model are the ``k`` best classes over all regions.
* ``max_conf`` (the earlier rule): the region with the largest max-softmax answers from its own logits.
  A 2-class STM head is structurally more confident than a 10-class LTM head, so this rule favours
  small regions (measured in the quick run's ``routing.*`` metrics).
* ``frozen_prototype``: choose the region in one shared feature space, the frozen backbone's
  (``-||h_0 - p0_c||^2 / 2`` over all classes, ``p0_c`` the class means of the frozen features kept with
  each region), then let that region's adapted head answer among its own classes. One more pass (the
  frozen backbone); region choice no longer depends on how far each LoRA moved its features.
* ``ltm_only``: the LTM alone (valid right after a restructuring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sr_cis.ca_oad import confidence_score

__all__ = ["ROUTING_RULES", "FastInference", "FastOutput", "RegionReadout", "route"]

ROUTING_RULES = ("nearest_prototype", "frozen_prototype", "max_conf", "ltm_only")


@dataclass
class FastOutput:
    pred: torch.Tensor  # [B] global class ids
    conf: torch.Tensor  # [B] max softmax of the scores the rule compared
    score: torch.Tensor  # [B] the CA-OAD score of those scores
    region: torch.Tensor  # [B] index into the region list of the region that answered
    topk: torch.Tensor  # [B, k] global class ids (best first, -1 = no candidate)
    passes: int  # forward passes of the small model per sample


@dataclass
class RegionReadout:
    """Per-region logits ``[B, C_r]``, comparable scores ``[B, C_r]`` and class ids of one batch; with
    frozen prototypes also the frozen-feature scores ``-||h_0 - p0_c||^2 / 2`` ``[B, C_r]``."""

    logits: list[torch.Tensor]
    comparable: list[torch.Tensor]
    classes: list[torch.Tensor]
    frozen: list[torch.Tensor] | None = None


def comparable_scores(head, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Scores of one region that are comparable across regions: ``z - ||h||^2 / 2`` for Euclidean heads
    (= ``-||h - p_c||^2 / 2`` with class-mean rows), the logits for cosine heads."""
    if head.norm == "euclid":
        return logits - 0.5 * (h.float() * h.float()).sum(1, keepdim=True)
    return logits


def route(ro: RegionReadout, rule: str, top_k: int = 3, score: str = "max_prob") -> FastOutput:
    """Apply routing ``rule`` to one batch's readout (all rules reuse the same forward passes)."""
    if rule not in ROUTING_RULES:
        raise ValueError(f"routing must be one of {ROUTING_RULES}, got {rule!r}")
    n_regions = len(ro.logits)
    B = ro.logits[0].shape[0]
    topk = torch.full((B, top_k), -1, dtype=torch.long)
    if rule == "frozen_prototype":
        if ro.frozen is None:
            raise ValueError("frozen_prototype routing needs the regions' frozen prototypes")
        s = torch.cat(ro.frozen, 1)
        cls = torch.cat(ro.classes)
        owner = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(ro.classes)])
        region = owner[s.argmax(1)]
        pred = torch.empty(B, dtype=torch.long)
        for ri in range(n_regions):  # the chosen region answers with its own (adapted) head
            m = region == ri
            if m.any():
                pred[m] = ro.classes[ri][ro.logits[ri][m].argmax(1)]
        # candidates: the answer first, then the nearest other classes in the frozen space
        s_rest = s.masked_fill(cls[None, :] == pred[:, None], float("-inf"))
        kk = min(top_k - 1, s.shape[1] - 1)
        topk[:, 0] = pred
        if kk > 0:
            topk[:, 1 : 1 + kk] = cls[s_rest.topk(kk, 1).indices]
        conf = s.softmax(1).max(1).values
        return FastOutput(pred, conf, confidence_score(s, score).float(), region, topk, n_regions + 1)
    if rule in ("nearest_prototype", "ltm_only"):
        s = torch.cat(ro.comparable, 1)
        cls = torch.cat(ro.classes)
        owner = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(ro.classes)])
        best = s.argmax(1)
        kk = min(top_k, s.shape[1])
        topk[:, :kk] = cls[s.topk(kk, 1).indices]
        conf = s.softmax(1).max(1).values
        return FastOutput(cls[best], conf, confidence_score(s, score).float(), owner[best], topk, n_regions)
    probs = [z.softmax(1) for z in ro.logits]
    conf_r = torch.stack([p.max(1).values for p in probs], 1)  # [B, R]
    best_conf, best = conf_r.max(1)
    pred = torch.empty(B, dtype=torch.long)
    sc = torch.empty(B)
    for ri in range(n_regions):
        m = best == ri
        if not m.any():
            continue
        z = ro.logits[ri][m]
        cls = ro.classes[ri]
        pred[m] = cls[z.argmax(1)]
        sc[m] = confidence_score(z, score).float()
        kk = min(top_k, z.shape[1])
        topk[m, :kk] = cls[z.topk(kk, 1).indices]
        if kk < top_k and n_regions > 1:  # fill from the other regions by softmax probability
            others = [j for j in range(n_regions) if j != ri]
            op = torch.cat([probs[j][m] for j in others], 1)
            oc = torch.cat([ro.classes[j] for j in others])
            n_fill = min(top_k - kk, op.shape[1])
            topk[m, kk : kk + n_fill] = oc[op.topk(n_fill, 1).indices]
    return FastOutput(pred, best_conf.float(), sc, best, topk, n_regions)


class FastInference:
    """``FastInference(small_model, memory, routing, top_k, score)(x) -> FastOutput``."""

    def __init__(
        self,
        small_model,
        memory,
        routing: str = "frozen_prototype",
        top_k: int = 3,
        score: str = "max_prob",
    ):
        if routing not in ROUTING_RULES:
            raise ValueError(f"routing must be one of {ROUTING_RULES}, got {routing!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.model = small_model
        self.memory = memory
        self.routing = routing
        self.top_k = top_k
        self.score = score

    def regions(self):
        regs = self.memory.regions
        if not regs:
            raise RuntimeError("the memory is empty: train at least one task before inference")
        if self.routing == "ltm_only":
            if self.memory.ltm is None:
                raise RuntimeError("routing='ltm_only' needs an LTM; restructure first")
            return [self.memory.ltm]
        return regs

    @torch.no_grad()
    def readout(self, x: torch.Tensor) -> RegionReadout:
        """One forward pass per region (plus one of the frozen backbone for ``frozen_prototype``)."""
        logits, comp, classes = [], [], []
        regs = self.regions()
        for r in regs:
            h = self.model.features(x, r.adapter).float()
            z = r.head(h).float()
            logits.append(z.cpu())
            comp.append(comparable_scores(r.head, h, z).cpu())
            classes.append(torch.tensor(r.classes, dtype=torch.long))
        frozen = None
        if self.routing == "frozen_prototype":
            if any(r.frozen_prototypes is None for r in regs):
                raise RuntimeError("frozen_prototype routing needs every region's frozen prototypes")
            h0 = self.model.features(x, None).float().cpu()
            frozen = [-0.5 * torch.cdist(h0, r.frozen_prototypes.float().cpu()) ** 2 for r in regs]
        return RegionReadout(logits, comp, classes, frozen)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> FastOutput:
        return route(self.readout(x), self.routing, self.top_k, self.score)
