"""Gradient-trained baselines on the shared session runner (ours; the official repository ships none).

All start from the same pre-trained encoder and its ``Linear(h, K_tot)`` classifier (the session-0
model), train full batch on the session graph with Adam and cross-entropy, and keep the
best-validation state of each session when the protocol does (the same rule as Mecoin):

* ``finetune``: the current session's supports only (lower bound; ``finetune_encoder=False`` trains the
  classifier alone on frozen embeddings);
* ``joint``: the base training nodes plus every support seen so far, class-balanced with
  ``joint_balanced`` (the upper bound of the protocol: everything it labels, trained at once);
* ``ewc``: + ``λ Σ_s Σ_i F_{s,i} (θ_i − θ*_{s,i})²`` with the diagonal empirical Fisher of each earlier
  session (Kirkpatrick et al., 2017; CGLB's N-CGL form);
* ``lwf``: + ``λ T² KL(softmax(ℓ_old/T) ‖ softmax(ℓ/T))`` over the old classes, with the previous
  session's model as teacher, on the current nodes (Li & Hoiem, 2017);
* ``ergnn``: replay of ``er_per_class`` nodes per old class drawn at random (ER-GNN, Zhou & Cao 2021,
  with random selection instead of coverage/influence selection).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from mecoin.config import BaselineConfig
from mecoin.session import GFSCILMethod, SessionContext, masked_argmax

__all__ = ["SupervisedBaseline"]

KINDS = ("finetune", "joint", "ewc", "lwf", "ergnn")


class SupervisedBaseline(GFSCILMethod):
    def __init__(
        self, kind: str, config: BaselineConfig, select_best_val: bool = True, seed: int = 0
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown supervised baseline {kind!r}; known: {list(KINDS)}")
        self.name, self.kind, self.config = kind, kind, config
        self.select_best_val = select_best_val
        self.generator = torch.Generator().manual_seed(seed)
        self.encoder: nn.Module | None = None
        self.classifier: nn.Linear | None = None
        self.fisher: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self.buffer = torch.empty(0, dtype=torch.long)
        self._h: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ model
    def setup(self, ctx: SessionContext, pretrained) -> None:
        self.encoder = copy.deepcopy(pretrained.encoder).to(ctx.device)
        self.classifier = copy.deepcopy(pretrained.classifier).to(ctx.device)
        if not self.config.finetune_encoder:
            self.encoder.requires_grad_(False)
        self.buffer = self.buffer.to(ctx.device)

    def parameters(self) -> list[nn.Parameter]:
        params = list(self.classifier.parameters())
        if self.config.finetune_encoder:
            params = list(self.encoder.parameters()) + params
        return params

    def _forward(self, ctx: SessionContext, train: bool) -> torch.Tensor:
        """Embeddings of all nodes (cached per session when the encoder is frozen)."""
        if not self.config.finetune_encoder:
            if self._h is None or self._h[0] != ctx.t:
                self.encoder.eval()
                with torch.no_grad():
                    self._h = (ctx.t, self.encoder(ctx.data.x, ctx.edge_index, ctx.edge_weight))
            return self._h[1]
        self.encoder.train(train)
        return self.encoder(ctx.data.x, ctx.edge_index, ctx.edge_weight)

    def _logits(self, ctx: SessionContext, idx: torch.Tensor, train: bool) -> torch.Tensor:
        self.classifier.train(train)
        return self.classifier(self._forward(ctx, train)[idx])

    @torch.no_grad()
    def logits(self, ctx: SessionContext, node_idx: torch.Tensor) -> torch.Tensor:
        return self._logits(ctx, node_idx, train=False)

    # ------------------------------------------------------------------ data of a session
    def train_idx(self, ctx: SessionContext) -> torch.Tensor:
        cur = ctx.supports()
        if self.kind == "joint":
            return torch.cat([ctx.base_train_idx()] + [ctx.supports(s) for s in range(1, ctx.t + 1)])
        if self.kind == "ergnn" and self.buffer.numel():
            return torch.cat([cur, self.buffer])
        return cur

    def _after_session(self, ctx: SessionContext) -> None:
        """Fisher of EWC and the ER-GNN buffer, from the session's own labelled nodes."""
        own = ctx.base_train_idx() if ctx.t == 0 else ctx.supports()
        if self.kind == "ewc":
            self.fisher.append(self._fisher(ctx, own))
        if self.kind == "ergnn":
            y = ctx.labels(own)
            picked = []
            for c in ctx.new_classes:
                nodes = own[y == c]
                order = torch.randperm(nodes.numel(), generator=self.generator)[: self.config.er_per_class]
                picked.append(nodes[order.to(nodes.device)])
            self.buffer = torch.cat([self.buffer, *picked])

    def _fisher(self, ctx: SessionContext, idx: torch.Tensor):
        params = self.parameters()
        for p in params:
            p.grad = None
        loss = F.cross_entropy(self._logits(ctx, idx, train=False), ctx.labels(idx))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        fisher = [torch.zeros_like(p) if g is None else g.detach() ** 2 for p, g in zip(params, grads)]
        return fisher, [p.detach().clone() for p in params]

    def _penalty(self, ctx: SessionContext, idx: torch.Tensor, logits: torch.Tensor, teacher) -> torch.Tensor:
        cfg = self.config
        if self.kind == "ewc" and self.fisher:
            params = self.parameters()
            total = logits.new_zeros(())
            for fisher, star in self.fisher:
                total = total + sum((f * (p - s) ** 2).sum() for f, p, s in zip(fisher, params, star))
            return cfg.ewc_lambda * total
        if self.kind == "lwf" and teacher is not None and ctx.old_classes:
            old = torch.as_tensor(ctx.old_classes, device=logits.device)
            T = cfg.lwf_temperature
            log_p = F.log_softmax(teacher[:, old] / T, dim=1)
            log_q = F.log_softmax(logits[:, old] / T, dim=1)
            kd = (log_p.exp() * (log_p - log_q)).sum(1).mean()
            return cfg.lwf_lambda * T * T * kd
        return logits.new_zeros(())

    def _class_weights(self, y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """Joint with ``joint_balanced`` (ours): every class weighs the same in the loss, however many
        labelled nodes it has (the base classes have ~10x more than the 5-shot novel ones)."""
        if self.kind != "joint" or not self.config.joint_balanced:
            return None
        counts = torch.bincount(y, minlength=num_classes).float()
        return torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), 0.0)

    # ------------------------------------------------------------------ session
    def fit_session(self, ctx: SessionContext) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        if ctx.t == 0 and not cfg.train_base_session:
            self._after_session(ctx)
            return {"seconds": time.perf_counter() - t0, "trained": 0.0}
        idx = self.train_idx(ctx)
        y = ctx.labels(idx)
        teacher = None
        if self.kind == "lwf" and ctx.t > 0:
            with torch.no_grad():
                teacher = self._logits(ctx, idx, train=False)
        params = self.parameters()
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        val_idx = ctx.val_idx()
        use_val = self.select_best_val and val_idx.numel() > 0
        y_val = ctx.labels(val_idx)
        allowed = ctx.mask()
        best_acc, best, loss = -1.0, None, torch.zeros(())
        epochs = range(cfg.epochs)
        if ctx.progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=f"{self.kind} session {ctx.t}", leave=False)
        weight = self._class_weights(y, ctx.task.num_classes)
        for _ in epochs:
            logits = self._logits(ctx, idx, train=True)
            loss = F.cross_entropy(logits, y, weight=weight) + self._penalty(ctx, idx, logits, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_val:
                with torch.no_grad():
                    acc = float(
                        (masked_argmax(self._logits(ctx, val_idx, train=False), allowed) == y_val)
                        .float()
                        .mean()
                    )
                if acc > best_acc:
                    best_acc = acc
                    best = (
                        copy.deepcopy(self.encoder.state_dict()),
                        copy.deepcopy(self.classifier.state_dict()),
                    )
        if best is not None:
            self.encoder.load_state_dict(best[0])
            self.classifier.load_state_dict(best[1])
        self._after_session(ctx)
        return {
            "loss": float(loss.detach()),
            "best_val_acc": best_acc if use_val else float("nan"),
            "train_nodes": int(idx.numel()),
            "seconds": time.perf_counter() - t0,
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "encoder": self.encoder.state_dict(),
            "classifier": self.classifier.state_dict(),
            "fisher": self.fisher,
            "buffer": self.buffer,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.classifier.load_state_dict(state["classifier"])
        self.fisher = state["fisher"]
        self.buffer = state["buffer"]
        self.generator.set_state(state["generator"])
        self._h = None

    def memory_bytes(self) -> dict[str, int]:
        from papers_shared.device import tensor_bytes

        out = {"encoder": tensor_bytes(self.encoder), "classifier": tensor_bytes(self.classifier)}
        out["total"] = out["encoder"] + out["classifier"]
        return out
