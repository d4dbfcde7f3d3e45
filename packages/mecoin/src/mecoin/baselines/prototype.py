"""Training-free prototype baselines on the frozen pre-trained encoder (ours, after the cited papers).

* ``ncm`` (Frozen-NCM / ProtoNet-style): class prototype = mean embedding of the class's labelled
  nodes when it appears (base classes: the base training nodes; novel classes: their supports);
  prediction by cosine similarity, ``ℓ_k = τ · cos(h, p_k)``.
* ``teen`` (Wang et al., NeurIPS 2023): NCM whose novel prototypes are calibrated with the base ones,
  ``p'_new = (1−w)·p̂_new + w·normalize(Σ_b softmax_b(τ·cos(p̂_new, p̂_b))·p̂_b)`` (τ = 16, w = 0.1).

Prototypes are stored when their class appears and never recomputed (no old data is revisited).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from mecoin.config import BaselineConfig
from mecoin.session import GFSCILMethod, SessionContext

__all__ = ["PrototypeBaseline", "teen_calibrate"]

_NO_PROTOTYPE = -1e9


def teen_calibrate(
    new: torch.Tensor, base: torch.Tensor, tau: float = 16.0, weight: float = 0.1
) -> torch.Tensor:
    """TEEN calibration (Wang et al., NeurIPS 2023, Eq. 5 of the TEEN paper) of novel prototypes ``new [m, h]`` with base prototypes ``base [B, h]``;
    both are L2-normalised first, the result is ``(1−w)·p̂_new + w·normalize(Σ_b a_b p̂_b)``."""
    p_new, p_base = F.normalize(new, dim=-1), F.normalize(base, dim=-1)
    attn = torch.softmax(tau * p_new @ p_base.T, dim=-1)
    return (1 - weight) * p_new + weight * F.normalize(attn @ p_base, dim=-1)


class PrototypeBaseline(GFSCILMethod):
    def __init__(self, kind: str, config: BaselineConfig) -> None:
        if kind not in ("ncm", "teen"):
            raise ValueError(f"unknown prototype baseline {kind!r}")
        self.name, self.kind, self.config = kind, kind, config
        self.encoder = None
        self.prototypes: torch.Tensor | None = None
        self.has_proto: torch.Tensor | None = None
        self._h: tuple[int, torch.Tensor] | None = None

    def setup(self, ctx: SessionContext, pretrained) -> None:
        self.encoder = copy.deepcopy(pretrained.encoder).to(ctx.device).eval().requires_grad_(False)
        k = ctx.task.num_classes
        self.prototypes = torch.zeros(k, self.encoder.out_dim, device=ctx.device)
        self.has_proto = torch.zeros(k, dtype=torch.bool, device=ctx.device)

    @torch.no_grad()
    def embeddings(self, ctx: SessionContext) -> torch.Tensor:
        if self._h is None or self._h[0] != ctx.t:
            self._h = (ctx.t, self.encoder(ctx.data.x, ctx.edge_index, ctx.edge_weight))
        return self._h[1]

    @torch.no_grad()
    def fit_session(self, ctx: SessionContext) -> dict:
        t0 = time.perf_counter()
        h = self.embeddings(ctx)
        idx = ctx.base_train_idx() if ctx.t == 0 else ctx.supports()
        y = ctx.labels(idx)
        new = ctx.new_classes
        protos = torch.stack([h[idx[y == c]].mean(0) for c in new])
        if self.kind == "teen" and ctx.t > 0:
            base = torch.as_tensor(ctx.task.base_classes, device=h.device)
            protos = teen_calibrate(
                protos, self.prototypes[base], self.config.teen_tau, self.config.teen_weight
            )
        cls = torch.as_tensor(new, device=h.device)
        self.prototypes[cls] = protos
        self.has_proto[cls] = True
        return {"seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def logits(self, ctx: SessionContext, node_idx: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.embeddings(ctx)[node_idx], dim=-1)
        scores = self.config.ncm_temperature * h @ F.normalize(self.prototypes, dim=-1).T
        return scores.masked_fill(~self.has_proto, _NO_PROTOTYPE)

    def state_dict(self) -> dict:
        return {"prototypes": self.prototypes, "has_proto": self.has_proto}

    def load_state_dict(self, state: dict) -> None:
        self.prototypes = state["prototypes"]
        self.has_proto = state["has_proto"]
        self._h = None

    def memory_bytes(self) -> dict[str, int]:
        return {"prototypes": self.prototypes.numel() * self.prototypes.element_size()}
