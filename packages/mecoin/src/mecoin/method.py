"""Mecoin as a method of the session runner: its per-session training (official ``train.py:train``,
commit b8a41c4).

Per session ``t``: register the new classes (class layout: write their keys), take the training set
(supports of sessions ``0..t`` with ``replay_supports``, else the current supports), then for
``epochs_per_session`` full-batch epochs: Mecoin + GNN head forward, GKIM loss, backward, clip the
Mecoin gradient norm, step the two Adam optimisers, and score the validation nodes of all seen
classes with ``ℓ^M``; the best-validation state is restored at the end of the session.

Caching (ours, exact): the encoder is frozen, so its embeddings are computed once per session;
the queries of an evaluation set do not depend on anything that learns (the key index is an argmin),
so the validation key index is computed once per session and each epoch's validation is a table read.
"""

from __future__ import annotations

import copy
import time

import torch

from mecoin.config import MecoinConfig
from mecoin.gkim import gkim_loss
from mecoin.model import Mecoin
from mecoin.session import (
    GFSCILMethod,
    SessionContext,
    clip_grad_norm,
    evaluate_session,
    legacy_train_mode,
    masked_argmax,
)

__all__ = ["MecoinMethod"]


class MecoinMethod(GFSCILMethod):
    """Mecoin on the session runner. ``model`` may be given (then ``setup`` only builds the memory)."""

    name = "mecoin"

    def __init__(
        self, config: MecoinConfig, model: Mecoin | None = None, select_best_val: bool = True
    ) -> None:
        self.config = config
        self.model = model
        self.select_best_val = select_best_val
        self.opt_mecoin: list[torch.optim.Optimizer] = []
        self.opt_head: torch.optim.Optimizer | None = None
        self._h: tuple[int, torch.Tensor] | None = None
        self.construction_log: list[dict[str, float]] = []

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: SessionContext, pretrained) -> None:
        """Official ``train.py:initialize_model`` and the start of ``train``: freeze the encoder, build MeCo/SMU/MRaM, one construction pass over
        the base pre-training nodes on the base graph, freeze the keys, zero MRaM, fresh head, optimisers."""
        cfg = self.config
        if self.model is None:
            self.model = Mecoin(copy.deepcopy(pretrained.encoder), cfg, num_classes=ctx.task.num_classes)
        self.model.to(ctx.device)
        self.construction_log = self.model.construct_memory(
            ctx.data, ctx.base_train_idx(), graph=(ctx.edge_index, ctx.edge_weight)
        )
        self._build_optimizers()

    def _build_optimizers(self) -> None:
        cfg, model = self.config, self.model
        others = [p for p in model.trainable_parameters() if p is not model.mram.values]
        if cfg.mram_optimizer == "sparse_adam":
            self.opt_mecoin = [torch.optim.SparseAdam([model.mram.values], lr=cfg.lr)]
            if others:
                self.opt_mecoin.append(torch.optim.Adam(others, lr=cfg.lr, weight_decay=cfg.weight_decay))
        else:
            self.opt_mecoin = [
                torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            ]
        self.opt_head = torch.optim.Adam(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ------------------------------------------------------------------ helpers
    def embeddings(self, ctx: SessionContext) -> torch.Tensor:
        """Frozen-encoder embeddings of all nodes on the session-``t`` graph (cached per session)."""
        if self._h is None or self._h[0] != ctx.t:
            self._h = (ctx.t, self.model.embed(ctx.data.x, ctx.edge_index, ctx.edge_weight))
        return self._h[1]

    def train_idx(self, ctx: SessionContext) -> torch.Tensor:
        return ctx.cumulative_supports() if self.config.replay_supports else ctx.supports()

    def _train_mode(self, t: int, epoch: int) -> bool:
        return legacy_train_mode(t, epoch) if self.config.legacy_mode_schedule else True

    def _snapshot(self) -> dict:
        snap = {"values": self.model.mram.values.detach().clone()}
        if self.config.restore_head:
            snap["head"] = copy.deepcopy(self.model.head.state_dict())
        return snap

    def _restore(self, snap: dict) -> None:
        with torch.no_grad():
            self.model.mram.values.copy_(snap["values"])
        if "head" in snap:
            self.model.head.load_state_dict(snap["head"])

    # ------------------------------------------------------------------ session
    def fit_session(self, ctx: SessionContext) -> dict:
        cfg, model = self.config, self.model
        t0 = time.perf_counter()
        h_all = self.embeddings(ctx)
        train_idx = self.train_idx(ctx)
        h_train, y_train = h_all[train_idx], ctx.labels(train_idx)
        model.add_classes(ctx.new_classes, h_train, y_train)
        val_idx = ctx.val_idx()
        use_val = self.select_best_val and val_idx.numel() > 0
        if use_val:
            model.eval()
            val_index = model.key_index(h_all[val_idx])
            y_val = ctx.labels(val_idx)
        allowed = ctx.mask()
        sparse = cfg.mram_optimizer == "sparse_adam"
        best_acc, best, last = -1.0, None, {}
        epochs = range(cfg.epochs_per_session)
        if ctx.progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=f"mecoin session {ctx.t}", leave=False)
        for epoch in epochs:
            model.train(self._train_mode(ctx.t, epoch))
            out = model.forward_embeddings(h_train, sparse=sparse)
            loss, last = gkim_loss(
                out.logits_gnn,
                out.logits_mram,
                y_train,
                cfg.distill,
                cfg.kl_weight,
                cfg.ce_weight,
                cfg.temperature,
                cfg.label_smoothing,
            )
            for opt in (*self.opt_mecoin, self.opt_head):
                opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_grad_norm(model.trainable_parameters(), cfg.grad_clip)
            for opt in (*self.opt_mecoin, self.opt_head):
                opt.step()
            if use_val:
                with torch.no_grad():
                    pred = masked_argmax(model.mram_logits(val_index), allowed)
                    acc = float((pred == y_val).float().mean())
                if acc > best_acc:
                    best_acc, best = acc, self._snapshot()
        if best is not None:
            self._restore(best)
        model.eval()
        return {
            "loss": float(sum(last.values())) if last else float("nan"),
            "best_val_acc": best_acc if use_val else float("nan"),
            "train_nodes": int(train_idx.numel()),
            "seconds": time.perf_counter() - t0,
        }

    @torch.no_grad()
    def logits(self, ctx: SessionContext, node_idx: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model.forward_embeddings(self.embeddings(ctx)[node_idx]).logits_mram

    def evaluate(self, ctx: SessionContext):
        """:class:`papers_shared.metrics.SessionResult` after session ``ctx.t``."""
        return evaluate_session(self, ctx)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt_mecoin": [o.state_dict() for o in self.opt_mecoin],
            "opt_head": self.opt_head.state_dict() if self.opt_head is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.opt_mecoin, state["opt_mecoin"]):
            opt.load_state_dict(s)
        if self.opt_head is not None and state["opt_head"] is not None:
            self.opt_head.load_state_dict(state["opt_head"])
        self._h = None

    def memory_bytes(self) -> dict[str, int]:
        return self.model.memory_bytes()
