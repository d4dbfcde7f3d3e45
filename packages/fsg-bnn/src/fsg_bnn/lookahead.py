"""The look-ahead meta-gradient framework shared by MetaQuant and FSG, as a drop-in ``torch.optim``
optimizer, plus the refinement ``pi`` of the BNN optimizer.

Sources: MetaQuant (Chen, Wang, Pan, NeurIPS 2019) and its fork, the official FSG code (two-tiger/FSG
@ 9559b30, read for every detail below): ``meta-quantize.py`` (the training loop),
``meta_utils/helpers.py:meta_fast_slow_gradient_generation`` (step 1),
``meta_utils/meta_quantized_module.py:MetaQuantConv.forward`` (step 2),
``meta_utils/adam.py:Adam.get_refine_gradient`` and ``meta_utils/SGD.py:SGD.get_refine_gradient`` (``pi``).

A user's loop stays the usual one::

    model = fsg_bnn.binarize(model)                    # 1-bit DoReFa weights
    opt = fsg_bnn.FSGOptimizer(model, lr=1e-3)         # or MetaQuantOptimizer(model, meta="multifc")
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)            # look-ahead forward (step 2)
        loss.backward()                                # meta signal + hooks g_t = dloss/dW^
        opt.step()                                     # meta nets step, BNN update, queue next G

One iteration ``t``, split over the calls of the loop:

1. *Meta-gradient generation* (run lazily by the first binarized layer of the next training forward,
   from ``g_{t-1}``, ``W~_{t-1}`` captured by the previous ``step()``): FSG computes
   ``G_fast = g * F(W~)`` and pushes ``g`` into the HGS to get ``G_slow = S([E[l]; H_l])[-n:]``;
   MetaQuant computes its single ``G``.
2. *Look-ahead forward*: each binarized layer uses ``W_meta`` (see :meth:`lookahead_weight`) and the
   bias ``b - eta b.grad_prev``.
3. ``loss.backward()`` (the user's) reaches the meta nets through ``W_meta``.
4. ``step()``: the meta optimizers (Adam) step; the BNN weights get ``W.grad <- c * G_fast`` (FSG
   ``update_mode="official"`` and MetaQuant) or ``alpha G_slow + (1 - alpha) c G_fast``
   (``"combined"``); ``pi`` refines every gradient in place and ``p <- p - eta p.grad``.
   At the very first step there is no meta gradient yet: no parameter moves (as the official loop).

The layers' hooks only fire in training mode with autograd enabled; evaluation uses the latent ``W``.
One forward/backward per ``step()`` is assumed (no gradient accumulation across forwards).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from typing import Any

import torch
import torch.nn as nn

from fsg_bnn.config import OptimConfig
from fsg_bnn.convert import binary_layers
from fsg_bnn.hgs import HistoricalGradientStorage
from fsg_bnn.hypernets import SlowNet
from fsg_bnn.layers import BinaryLayer
from fsg_bnn.quant import preprocess

__all__ = [
    "MetaGradientOptimizer",
    "adam_refine",
    "as_config",
    "sgd_refine",
]


def adam_refine(grad: torch.Tensor, state: dict, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """Old-style Adam refinement ``pi(g) = sqrt(1-b2^t)/(1-b1^t) * m_t / (sqrt(v_t) + eps)`` (official
    ``meta_utils/adam.py:Adam.get_refine_gradient``).

    Updates ``state`` (``step``, ``exp_avg``, ``exp_avg_sq``) in place. ``eta * pi(g)`` is torch
    Adam's step up to the placement of ``eps`` (here not bias-corrected).
    """
    b1, b2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    t = state["step"]
    step_size = math.sqrt(1 - b2**t) / (1 - b1**t)
    return step_size * m / (v.sqrt() + eps)


def sgd_refine(grad: torch.Tensor, state: dict, momentum: float = 0.0) -> torch.Tensor:
    """SGD refinement: identity, or heavy-ball ``buf <- momentum * buf + g`` (first ``buf = g``)."""
    if momentum == 0:
        return grad.clone()
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = grad.clone()
    else:
        state["momentum_buffer"].mul_(momentum).add_(grad)
    return state["momentum_buffer"].clone()


def as_config(config: OptimConfig | None, method: str, kwargs: dict[str, Any]) -> OptimConfig:
    """``config`` (default: :class:`OptimConfig`) with ``method`` and keyword options, validated."""
    valid = {f.name for f in fields(OptimConfig)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(valid)}")
    return replace(config or OptimConfig(), method=method, **kwargs)


class MetaGradientOptimizer(torch.optim.Optimizer, metaclass=abc.ABCMeta):
    """Base of :class:`MetaQuantOptimizer` and :class:`FSGOptimizer` (steps 1-5 of the module docstring).

    ``param_groups`` hold the BNN parameters (``model.parameters()`` by default), so torch LR
    schedulers work; the learning rate of a layer's group is the ``eta`` of its look-ahead. The meta
    nets live in :attr:`meta_nets` with their own Adam optimizers (:attr:`meta_optimizers`).
    """

    def __init__(self, model: nn.Module, config: OptimConfig, params: Iterable | None = None) -> None:
        self.config = config
        self.model = model
        self.layers: list[tuple[str, BinaryLayer]] = binary_layers(model)
        cfg = config
        betas = tuple(cfg.betas)
        wd = cfg.sgdm_weight_decay if cfg.base_optimizer == "sgd-m" else cfg.weight_decay
        defaults = {
            "lr": cfg.lr,
            "betas": betas,
            "eps": cfg.eps,
            "weight_decay": wd,
            "momentum": cfg.momentum if cfg.base_optimizer == "sgd-m" else 0.0,
        }
        self._lr_index: dict[int, int] | None = None
        super().__init__(list(params) if params is not None else list(model.parameters()), defaults)
        owned = {id(p) for g in self.param_groups for p in g["params"]}
        for name, layer in self.layers:
            if id(layer.weight) not in owned:
                raise ValueError(
                    f"binarized layer {name!r}: its weight is not among the optimized parameters"
                )
        for _, layer in self.layers:
            layer.attach(self)
        self.meta_nets = nn.ModuleDict()
        self.meta_optimizers: list[torch.optim.Optimizer] = []
        self._meta: dict[str, dict[str, torch.Tensor]] | None = None  # meta grads of this iteration
        self._pending = False  # generation queued for the next training forward
        self._captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prev_grad: dict[str, dict[str, torch.Tensor]] = {}
        self._flips = [0, 0]
        self.num_steps = 0
        self.stats: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._lr_index = None

    def _lr(self, p: torch.Tensor) -> float:
        if self._lr_index is None:
            self._lr_index = {id(q): i for i, g in enumerate(self.param_groups) for q in g["params"]}
        return float(self.param_groups[self._lr_index[id(p)]]["lr"])

    def _finish_meta_setup(self) -> None:
        device = next(iter(self.model.parameters())).device
        self.meta_nets.to(device)

    def _make_slow_net(self, kind: str) -> SlowNet:
        """A sequence slow net (official ``meta_network.py:MetaMambaHistory``) with one LRE per binarized layer, sized by the config."""
        c = self.config
        return SlowNet(
            len(self.layers),
            kind,
            c.d_state,
            c.d_conv,
            c.expand,
            c.use_lre,
            c.s4_d_model,
            c.s5_dim,
            c.s5_state,
            c.scan_backend,
            c.scan_chunk,
        )

    def _adam(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=self.config.meta_weight_decay)

    # -- called by the binarized layers during the forward ---------------------------------------
    def _ensure_generated(self) -> None:
        if self._pending:
            self._pending = False
            self._meta = self._generate()
            self._flips = [0, 0]

    def lookahead_weight(self, layer: BinaryLayer) -> torch.Tensor:
        """``W_meta`` of ``layer`` for this training forward (step 2); ``W`` at the first step."""
        self._ensure_generated()
        meta = self._meta.get(layer.layer_name) if self._meta is not None else None
        if meta is None:
            return layer.weight * 1.0
        w_meta = self._lookahead(layer, meta, self._lr(layer.weight))
        if self.config.track_sign_flips:
            with torch.no_grad():
                self._flips[0] += int((torch.sign(w_meta) != torch.sign(layer.weight)).sum())
                self._flips[1] += w_meta.numel()
        return w_meta

    def lookahead_bias(self, layer: BinaryLayer) -> torch.Tensor:
        """``b - eta b.grad_prev`` (plain look-ahead of the bias) once meta gradients exist."""
        prev = self._prev_grad.get(layer.layer_name, {}).get("bias")
        if self._meta is None or prev is None:
            return layer.bias * 1.0
        return layer.bias - self._lr(layer.bias) * prev

    # -- the step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Meta nets step, BNN update with the meta gradient, capture ``g_t`` and ``W~_t`` (steps 4-5)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        from fsg_bnn.distributed import average_meta_signals

        average_meta_signals(self)  # g and the meta nets' grads: the mean over processes (torchrun)
        captured = {}
        for name, layer in self.layers:
            g, wt = layer.quantized_grad, layer.pre_quantized
            if g is None or wt is None:
                raise RuntimeError(
                    f"no gradient was captured for binarized layer {name!r}: run a forward in training "
                    "mode with autograd enabled and loss.backward() before optimizer.step()"
                )
            if not torch.isfinite(g).all():
                raise FloatingPointError(f"non-finite gradient dloss/dW^ in layer {name!r} (loss diverged?)")
            captured[name] = (g, wt)
        for opt in self.meta_optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self._meta is not None:
            for name, layer in self.layers:
                layer.weight.grad = (
                    self._update_gradient(layer, self._meta[name]).detach().to(layer.weight.dtype)
                )
            self._refine_and_apply()
        if self._flips[1]:
            self.stats["sign_flip_rate"] = self._flips[0] / self._flips[1]
        self._prev_grad = {}
        for name, layer in self.layers:
            self._prev_grad[name] = {
                k: p.grad.detach().clone()
                for k, p in (("weight", layer.weight), ("bias", layer.bias))
                if p is not None and p.grad is not None
            }
            layer.quantized_grad = None
            layer.pre_quantized = None
        self._captured = captured
        self._meta = None
        self._pending = True
        self.num_steps += 1
        return loss

    def _refine_and_apply(self) -> None:
        base = self.config.base_optimizer
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.detach()
                if group["weight_decay"]:
                    grad = grad.add(p.detach(), alpha=group["weight_decay"])
                state = self.state[p]
                if base == "adam":
                    refined = adam_refine(grad, state, group["betas"], group["eps"])
                else:
                    refined = sgd_refine(grad, state, group["momentum"])
                p.grad = refined
                p.add_(refined, alpha=-group["lr"])

    # -- defined by each method ---------------------------------------------------------------------
    @abc.abstractmethod
    def _generate(self) -> dict[str, dict[str, torch.Tensor]]:
        """Meta gradients of every layer from the captured ``(g, W~)`` (step 1)."""

    @abc.abstractmethod
    def _lookahead(self, layer: BinaryLayer, meta: dict[str, torch.Tensor], lr: float) -> torch.Tensor:
        """The differentiable ``W_meta`` (step 2)."""

    @abc.abstractmethod
    def _update_gradient(self, layer: BinaryLayer, meta: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gradient written into ``W.grad`` before ``pi`` (step 5)."""

    # -- shared generation pieces -------------------------------------------------------------------
    def _inputs(self, name: str, layer: BinaryLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, W~)`` of the previous iteration; ``W~ = A(W)`` with ``fast_input="latent"``."""
        g, wt = self._captured[name]
        if self.config.fast_input == "latent":
            wt = preprocess(layer.weight.detach(), layer.quantizer)
        return g, wt

    def _sequence_outputs(self, net: SlowNet, hgs: HistoricalGradientStorage) -> dict[str, torch.Tensor]:
        """Push every layer's ``g`` into the HGS and run the sequence net; the outputs aligned with the
        newest gradient, flattened, per layer (official ``helpers.py:meta_fast_slow_gradient_generation``). Layers are batched per
        ``config.layer_batching`` (all exact: the slow net is causal and runs per sequence; ``"packed"``
        runs every layer in one call)."""
        cfg = self.config
        seqs, idx = {}, {}
        for name, layer in self.layers:
            seqs[name] = hgs.push(name, self._captured[name][0])
            idx[name] = layer.lre_index
        out: dict[str, torch.Tensor] = {}
        if hgs.layout == "coordinate":
            names = list(seqs)
            batch = torch.cat([seqs[n] for n in names], 0)
            layer_idx = torch.cat([torch.full((seqs[n].shape[0],), idx[n], dtype=torch.long) for n in names])
            res = net(batch, layer_idx.to(batch.device))
            start = 0
            for n in names:
                k = seqs[n].shape[0]
                out[n] = hgs.current(n, res[start : start + k])
                start += k
            return out
        if cfg.layer_batching == "packed":
            names = list(seqs)
            newest = [self._captured[n][0].numel() for n in names]  # hgs.current: the last n outputs
            res = net.forward_packed([seqs[n].reshape(-1) for n in names], [idx[n] for n in names], newest)
            return dict(zip(names, res))
        groups: list[list[str]] = []
        if cfg.layer_batching == "none":
            groups = [[n] for n in seqs]
        else:
            key = (lambda n: 0) if cfg.layer_batching == "pad" else (lambda n: seqs[n].shape[1])
            buckets: dict[int, list[str]] = {}
            for n in sorted(seqs, key=lambda n: -seqs[n].shape[1]):
                buckets.setdefault(key(n), []).append(n)
            for members in buckets.values():
                cur: list[str] = []
                for n in members:
                    longest = seqs[cur[0]].shape[1] if cur else seqs[n].shape[1]
                    if cur and (len(cur) + 1) * longest > cfg.max_batch_tokens:
                        groups.append(cur)
                        cur = []
                    cur.append(n)
                groups.append(cur)
        for members in groups:
            length = max(seqs[n].shape[1] for n in members)
            batch = torch.cat(
                [torch.nn.functional.pad(seqs[n], (0, 0, 0, length - seqs[n].shape[1])) for n in members], 0
            )
            layer_idx = torch.tensor([idx[n] for n in members], dtype=torch.long, device=batch.device)
            res = net(batch, layer_idx)
            for i, n in enumerate(members):
                out[n] = hgs.current(n, res[i : i + 1, : seqs[n].shape[1]])
        return out

    # -- state ----------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """BNN optimizer state, meta nets and their optimizers, HGS / hidden states, captured inputs."""
        return {
            "optimizer": super().state_dict(),
            "config": asdict(self.config),
            "meta_nets": self.meta_nets.state_dict(),
            "meta_optimizers": [o.state_dict() for o in self.meta_optimizers],
            "captured": {k: (g.clone(), w.clone()) for k, (g, w) in self._captured.items()},
            "prev_grad": {k: {kk: t.clone() for kk, t in v.items()} for k, v in self._prev_grad.items()},
            "pending": self._pending,
            "num_steps": self.num_steps,
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next training forward regenerates the meta gradients."""
        if not isinstance(state_dict, dict) or "optimizer" not in state_dict or "meta_nets" not in state_dict:
            raise ValueError(
                "not a meta-gradient optimizer state dict (expected keys 'optimizer', 'meta_nets')"
            )
        if state_dict.get("config", {}).get("method") not in (None, self.config.method):
            raise ValueError(
                f"state dict is for method {state_dict['config']['method']!r}, this optimizer is "
                f"{self.config.method!r}"
            )
        super().load_state_dict(state_dict["optimizer"])
        self.meta_nets.load_state_dict(state_dict["meta_nets"])
        for opt, s in zip(self.meta_optimizers, state_dict["meta_optimizers"], strict=True):
            opt.load_state_dict(s)
        device = next(iter(self.model.parameters())).device
        self._captured = {k: (g.to(device), w.to(device)) for k, (g, w) in state_dict["captured"].items()}
        self._prev_grad = {
            k: {kk: t.to(device) for kk, t in v.items()} for k, v in state_dict["prev_grad"].items()
        }
        self._pending = bool(state_dict["pending"])
        self._meta = None
        self.num_steps = int(state_dict["num_steps"])
        self._load_extra_state(state_dict.get("extra", {}))

    def detach_model(self) -> None:
        """Release the model's layers (they go back to plain STE forwards)."""
        for _, layer in self.layers:
            if layer.controller is self:
                layer.detach_controller()
