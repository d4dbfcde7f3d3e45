"""Linear-probe bound (ours): what a linear read-out of the frozen encoder can reach with every label.

Every method that keeps the pre-trained encoder frozen (Mecoin, NCM, TEEN, head-only Finetune) reads
its predictions from the same embeddings, so a linear classifier trained on them with far more labels
than the protocol gives bounds what those methods can be expected to reach. The probe sees the labels of
every node of the seen classes: the base pre-training nodes, the supports and validation nodes of every
session, and the test nodes by cross-fitting. Each test node is scored by a probe fitted without it
(``probe_folds`` folds, assigned once per node with the run's seed), so no node is scored by a
classifier that saw its label. The probe is multinomial logistic regression trained full batch with Adam
from zero weights in every session (no old model is kept: it is a bound, not a continual learner).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from mecoin.config import BaselineConfig
from mecoin.session import GFSCILMethod, SessionContext

__all__ = ["ProbeBaseline", "fit_linear_probe"]


def fit_linear_probe(
    h: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 300, lr: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``softmax(h W + b)`` on standardised ``h``; returns ``(W, b)``
    acting on the raw embeddings."""
    mu, sd = h.mean(0), h.std(0).clamp(min=1e-6)
    z = (h - mu) / sd
    w = torch.zeros(h.shape[1], num_classes, device=h.device, requires_grad=True)
    b = torch.zeros(num_classes, device=h.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = F.cross_entropy(z @ w + b, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    w_raw = w.detach() / sd.unsqueeze(1)
    return w_raw, b.detach() - mu @ w_raw


class ProbeBaseline(GFSCILMethod):
    """Cross-fitted linear probe on the frozen pre-trained encoder (see the module docstring)."""

    name = "probe"

    def __init__(self, config: BaselineConfig, seed: int = 0) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.encoder = None
        self.fold: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None  # [folds, h, K]
        self.bias: torch.Tensor | None = None  # [folds, K]
        self._h: tuple[int, torch.Tensor] | None = None

    def setup(self, ctx: SessionContext, pretrained) -> None:
        self.encoder = copy.deepcopy(pretrained.encoder).to(ctx.device).eval().requires_grad_(False)
        n, folds = ctx.data.num_nodes, self.config.probe_folds
        self.fold = (torch.randperm(n, generator=self.generator) % folds).to(ctx.device)
        k, h = ctx.task.num_classes, self.encoder.out_dim
        self.weights = torch.zeros(folds, h, k, device=ctx.device)
        self.bias = torch.zeros(folds, k, device=ctx.device)

    @torch.no_grad()
    def embeddings(self, ctx: SessionContext) -> torch.Tensor:
        if self._h is None or self._h[0] != ctx.t:
            self._h = (ctx.t, self.encoder(ctx.data.x, ctx.edge_index, ctx.edge_weight))
        return self._h[1]

    def fit_session(self, ctx: SessionContext) -> dict:
        t0 = time.perf_counter()
        h = self.embeddings(ctx)
        labelled = torch.cat(
            [ctx.base_train_idx(), ctx.val_idx()] + [ctx.supports(s) for s in range(1, ctx.t + 1)]
        )
        test = torch.cat(ctx.test_groups())
        for f in range(self.config.probe_folds):
            idx = torch.cat([labelled, test[self.fold[test] != f]])
            w, b = fit_linear_probe(
                h[idx], ctx.labels(idx), ctx.task.num_classes, self.config.probe_epochs, self.config.probe_lr
            )
            self.weights[f], self.bias[f] = w, b
        return {"seconds": time.perf_counter() - t0, "train_nodes": float(labelled.numel() + test.numel())}

    @torch.no_grad()
    def logits(self, ctx: SessionContext, node_idx: torch.Tensor) -> torch.Tensor:
        """Each node scored by the probe of its own fold (fitted without that fold's test nodes)."""
        h = self.embeddings(ctx)[node_idx]
        f = self.fold[node_idx]
        return torch.einsum("nh,nhk->nk", h, self.weights[f]) + self.bias[f]

    def state_dict(self) -> dict:
        return {"fold": self.fold, "weights": self.weights, "bias": self.bias}

    def load_state_dict(self, state: dict) -> None:
        self.fold, self.weights, self.bias = state["fold"], state["weights"], state["bias"]
        self._h = None

    def memory_bytes(self) -> dict[str, int]:
        return {"probe": self.weights.numel() * self.weights.element_size()}
