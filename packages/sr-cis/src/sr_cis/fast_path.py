"""Fast inference with decoupled memory (spec §3.6).

For every region ``r``: ``z_r = head_r(h_r(x))``, ``conf_r = max softmax(z_r)``; the region that is most
confident answers (``r* = argmax_r conf_r``). Top-k candidates come from ``z_{r*}``, filled from the
other regions by softmax probability when ``k > C_{r*}``. ``routing="ltm_only"`` reads only the LTM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sr_cis.ca_oad import confidence_score

__all__ = ["FastInference", "FastOutput"]


@dataclass
class FastOutput:
    pred: torch.Tensor  # [B] global class ids
    conf: torch.Tensor  # [B] max softmax of the chosen region
    score: torch.Tensor  # [B] the CA-OAD score (max_prob / max_logit / margin) of the chosen region
    region: torch.Tensor  # [B] index into the region list
    topk: torch.Tensor  # [B, k] global class ids (best first)
    passes: int  # forward passes of the small model per sample


class FastInference:
    def __init__(
        self, small_model, memory, routing: str = "max_conf", top_k: int = 3, score: str = "max_prob"
    ):
        if routing not in ("max_conf", "ltm_only"):
            raise ValueError(f"routing must be 'max_conf' or 'ltm_only', got {routing!r}")
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
    def __call__(self, x: torch.Tensor) -> FastOutput:
        regs = self.regions()
        logits = [r.head(self.model.features(x, r.adapter)).float().cpu() for r in regs]
        probs = [z.softmax(1) for z in logits]
        conf = torch.stack([p.max(1).values for p in probs], 1)  # [B, R]
        best_conf, best = conf.max(1)
        B = x.shape[0]
        pred = torch.empty(B, dtype=torch.long)
        score = torch.empty(B)
        k = self.top_k
        topk = torch.full((B, k), -1, dtype=torch.long)
        cls = [torch.tensor(r.classes) for r in regs]
        for ri in range(len(regs)):
            m = best == ri
            if not m.any():
                continue
            z = logits[ri][m]
            pred[m] = cls[ri][z.argmax(1)]
            score[m] = confidence_score(z, self.score).float()
            kk = min(k, z.shape[1])
            topk[m, :kk] = cls[ri][z.topk(kk, 1).indices]
            if kk < k and len(regs) > 1:
                others = [j for j in range(len(regs)) if j != ri]
                op = torch.cat([probs[j][m] for j in others], 1)
                oc = torch.cat([cls[j] for j in others])
                n_fill = min(k - kk, op.shape[1])
                topk[m, kk : kk + n_fill] = oc[op.topk(n_fill, 1).indices]
        return FastOutput(pred, best_conf.float(), score, best, topk, len(regs))
