"""Meta-gradient optimizers: MetaQuant (spec §4) and FSG (spec §3.6) as drop-in ``torch.optim``
optimizers, plus the refinement ``pi`` of the BNN optimizer.

A user's loop stays the usual one::

    model = fsg_bnn.binarize(model)                    # spec §3.1
    opt = fsg_bnn.FSGOptimizer(model, lr=1e-3)         # or MetaQuantOptimizer(model, meta="multifc")
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)            # look-ahead forward (spec §3.6 step 2)
        loss.backward()                                # meta signal + hooks g_t = dloss/dW^
        opt.step()                                     # meta nets step, BNN update, queue next G

One iteration ``t`` (spec §3.6), split over the calls of the loop:

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
   At the very first step there is no meta gradient yet: no parameter moves.

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

from fsg_bnn.config import METAQUANT_METHODS, OptimConfig
from fsg_bnn.convert import binary_layers
from fsg_bnn.hgs import HistoricalGradientStorage
from fsg_bnn.hypernets import LSTMFC, FCGrad, MultiFC, SlowNet
from fsg_bnn.layers import BinaryLayer
from fsg_bnn.quant import calibration, preprocess

__all__ = [
    "FSGOptimizer",
    "MetaGradientOptimizer",
    "MetaQuantOptimizer",
    "adam_refine",
    "build_optimizer",
    "sgd_refine",
]


def adam_refine(grad: torch.Tensor, state: dict, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """Old-style Adam refinement ``pi(g) = sqrt(1-b2^t)/(1-b1^t) * m_t / (sqrt(v_t) + eps)`` (spec §3.6).

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


def _as_config(config: OptimConfig | None, method: str, kwargs: dict[str, Any]) -> OptimConfig:
    valid = {f.name for f in fields(OptimConfig)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(valid)}")
    cfg = replace(config or OptimConfig(), method=method, **kwargs)
    _validate(cfg)
    return cfg


def _validate(cfg: OptimConfig) -> None:
    if cfg.base_optimizer not in ("adam", "sgd", "sgd-m"):
        raise ValueError(f"unknown base_optimizer {cfg.base_optimizer!r}; use 'adam', 'sgd' or 'sgd-m'")
    if not (cfg.lr >= 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be a finite non-negative number, got {cfg.lr}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.update_mode not in ("official", "combined"):
        raise ValueError(f"update_mode must be 'official' or 'combined', got {cfg.update_mode!r}")
    if cfg.hgs_length < 1:
        raise ValueError(f"hgs_length must be >= 1, got {cfg.hgs_length}")
    if cfg.fast_input not in ("lookahead", "latent"):
        raise ValueError(f"fast_input must be 'lookahead' or 'latent', got {cfg.fast_input!r}")
    if cfg.layer_batching not in ("exact", "pad", "none"):
        raise ValueError(f"layer_batching must be 'exact', 'pad' or 'none', got {cfg.layer_batching!r}")


class MetaGradientOptimizer(torch.optim.Optimizer, metaclass=abc.ABCMeta):
    """Base of :class:`MetaQuantOptimizer` and :class:`FSGOptimizer` (spec §3.6 steps 1-5).

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
        """A sequence slow net (spec §3.3-3.4) with one LRE per binarized layer, sized by the config."""
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
        """``W_meta`` of ``layer`` for this training forward (spec §3.6 step 2); ``W`` at the first step."""
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
        """Meta nets step, BNN update with the meta gradient, capture ``g_t`` and ``W~_t`` (spec §3.6)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        """Meta gradients of every layer from the captured ``(g, W~)`` (spec §3.6 step 1)."""

    @abc.abstractmethod
    def _lookahead(self, layer: BinaryLayer, meta: dict[str, torch.Tensor], lr: float) -> torch.Tensor:
        """The differentiable ``W_meta`` (spec §3.6 step 2)."""

    @abc.abstractmethod
    def _update_gradient(self, layer: BinaryLayer, meta: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gradient written into ``W.grad`` before ``pi`` (spec §3.6 step 5)."""

    # -- shared generation pieces -------------------------------------------------------------------
    def _inputs(self, name: str, layer: BinaryLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, W~)`` of the previous iteration; ``W~ = A(W)`` with ``fast_input="latent"``."""
        g, wt = self._captured[name]
        if self.config.fast_input == "latent":
            wt = preprocess(layer.weight.detach(), layer.quantizer)
        return g, wt

    def _sequence_outputs(self, net: SlowNet, hgs: HistoricalGradientStorage) -> dict[str, torch.Tensor]:
        """Push every layer's ``g`` into the HGS and run the sequence net; the outputs aligned with the
        newest gradient, flattened, per layer (spec §3.2-3.4). Layers are batched per
        ``config.layer_batching`` (exact: the slow net is causal and runs per sequence)."""
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


class MetaQuantOptimizer(MetaGradientOptimizer):
    """MetaQuant (Chen et al., NeurIPS 2019) with one meta net ``meta`` (spec §4).

    Look-ahead ``W_meta = W - eta (c G + (W.grad_prev - c G).detach())``: its value is
    ``W - eta W.grad_prev`` (the previous refined gradient) while its gradient flows through ``G``;
    update ``W.grad <- c G``, then ``pi``. Meta nets:

    * ``"fcgrad"``: ``G = FC(g)``; ``"multifc"``: ``G = g * MLP(W~)``;
    * ``"lstmfc"`` / ``"lstmfc-grad"`` / ``"lstmfc-merge"`` / ``"lstmfc-momentum"``: ``G = g * LSTMFC(x)``
      with ``x = W~``, ``g``, ``[W~, g]`` or the EMA-0.9 momentum of ``g``, hidden state carried;
    * ``"mamba-history"`` / ``"s4-history"`` / ``"s5-history"``: ``G = Seq(HGS)[-n:]`` (slow net alone).
    """

    def __init__(
        self,
        model: nn.Module,
        meta: str = "multifc",
        lr: float | None = None,
        *,
        config: OptimConfig | None = None,
        params: Iterable | None = None,
        **kwargs: Any,
    ) -> None:
        if meta not in METAQUANT_METHODS:
            raise ValueError(f"unknown MetaQuant meta net {meta!r}; use one of {list(METAQUANT_METHODS)}")
        cfg = _as_config(config, meta, kwargs if lr is None else {"lr": lr, **kwargs})
        super().__init__(model, cfg, params)
        if meta == "fcgrad":
            net: nn.Module = FCGrad(cfg.hidden, cfg.nonlinearity)
        elif meta == "multifc":
            net = MultiFC(cfg.hidden, cfg.num_fc, cfg.nonlinearity)
        elif meta.startswith("lstmfc"):
            net = LSTMFC(cfg.hidden)
        else:
            kind = meta.split("-")[0]
            net = self._make_slow_net(kind)
            self.hgs = HistoricalGradientStorage(cfg.hgs_length, cfg.hgs_layout)
        self.meta_nets["meta"] = net
        self._finish_meta_setup()
        self.meta_optimizers = [self._adam(net, cfg.meta_lr)]
        self._hidden: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._momentum: dict[str, torch.Tensor] = {}

    def _generate(self):
        meta, net = self.config.method, self.meta_nets["meta"]
        if isinstance(net, SlowNet):
            seq = self._sequence_outputs(net, self.hgs)
        out = {}
        for name, layer in self.layers:
            g, wt = self._inputs(name, layer)
            if meta == "fcgrad":
                G = net(g.reshape(-1, 1))
            elif meta == "multifc":
                G = g.reshape(-1, 1) * net(wt.reshape(-1, 1))
            elif meta.startswith("lstmfc"):
                gi, wi = g.reshape(1, -1, 1), wt.reshape(1, -1, 1)
                if meta == "lstmfc":
                    x = wi
                elif meta == "lstmfc-grad":
                    x = gi
                elif meta == "lstmfc-merge":
                    x = torch.cat([wi, gi], 0)
                else:  # momentum: the LSTM reads the previous EMA, the new one is stored
                    x = self._momentum.get(name, gi)
                    self._momentum[name] = 0.9 * x + 0.1 * gi
                o, (h, c) = net(x, self._hidden.get(name))
                self._hidden[name] = (h.detach(), c.detach())
                G = g.reshape(-1, 1) * o
            else:
                G = seq[name]
            out[name] = {"G": G.reshape(g.shape), "c": calibration(layer.weight, layer.quantizer)}
        return out

    def _lookahead(self, layer, meta, lr):
        cG = meta["c"] * meta["G"]
        prev = self._prev_grad.get(layer.layer_name, {}).get("weight")
        if prev is None:
            prev = cG.detach()
        return layer.weight - lr * (cG + (prev - cG.detach()))

    def _update_gradient(self, layer, meta):
        return meta["c"] * meta["G"]

    def _extra_state(self):
        out: dict[str, Any] = {"hidden": self._hidden, "momentum": self._momentum}
        if hasattr(self, "hgs"):
            out["hgs"] = self.hgs.state_dict()
        return out

    def _load_extra_state(self, state):
        self._hidden = dict(state.get("hidden", {}))
        self._momentum = dict(state.get("momentum", {}))
        if hasattr(self, "hgs") and "hgs" in state:
            self.hgs.load_state_dict(state["hgs"])


class FSGOptimizer(MetaGradientOptimizer):
    """Fast and Slow Gradient generation (spec §3.2-3.6).

    * fast net ``F`` (MultiFC 1-100-100-1, Adam lr 1e-2): ``G_fast = g * F(W~)``;
    * slow net ``S`` (Mamba(d_model 1, d_state 16, d_conv 8, expand 100) with LRE, Adam lr 1e-3) over
      the HGS window of ``L = 5`` gradients: ``G_slow = S([E[l]; H_l])[-n:]`` (not multiplied by ``g``,
      not calibrated);
    * look-ahead ``W_meta = W - eta (alpha G_slow + (1 - alpha) c G_fast)``, ``alpha = 0.9``;
    * update ``W.grad <- c G_fast`` (``update_mode="official"``, the code) or
      ``alpha G_slow + (1 - alpha) c G_fast`` (``"combined"``, the paper's Figure 1).

    Ablations: ``hgs_length=1`` (no HGS), ``use_lre=False``, ``slow_net="lstm"`` (``G_slow = g *
    LSTMFC(W~)``, MetaFastAndLSTM), ``"s4"``/``"s5"``, ``swap_roles=True`` (MetaMambaAndFC).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float | None = None,
        *,
        config: OptimConfig | None = None,
        params: Iterable | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = _as_config(config, "fsg", kwargs if lr is None else {"lr": lr, **kwargs})
        super().__init__(model, cfg, params)
        mlp = MultiFC(cfg.hidden, cfg.num_fc, cfg.nonlinearity)
        if cfg.slow_net == "lstm":
            seq: nn.Module = LSTMFC(cfg.hidden)
        else:
            seq = self._make_slow_net(cfg.slow_net)
        fast, slow = (seq, mlp) if cfg.swap_roles else (mlp, seq)
        self.meta_nets["fast"] = fast
        self.meta_nets["slow"] = slow
        self._finish_meta_setup()
        self.meta_optimizers = [self._adam(fast, cfg.fast_lr), self._adam(slow, cfg.slow_lr)]
        self.hgs = HistoricalGradientStorage(cfg.hgs_length, cfg.hgs_layout)
        self._hidden: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def fast_net(self) -> nn.Module:
        return self.meta_nets["fast"]

    @property
    def slow_net(self) -> nn.Module:
        return self.meta_nets["slow"]

    def _generate(self):
        seq_net = self.meta_nets["fast" if self.config.swap_roles else "slow"]
        mlp = self.meta_nets["slow" if self.config.swap_roles else "fast"]
        seq_out = self._sequence_outputs(seq_net, self.hgs) if isinstance(seq_net, SlowNet) else None
        out = {}
        for name, layer in self.layers:
            g, wt = self._inputs(name, layer)
            scaled = g.reshape(-1, 1) * mlp(wt.reshape(-1, 1))
            if seq_out is not None:
                other = seq_out[name]
            else:  # LSTMFC slow net on W~, hidden state carried (MetaFastAndLSTM)
                o, (h, c) = seq_net(wt.reshape(1, -1, 1), self._hidden.get(name))
                self._hidden[name] = (h.detach(), c.detach())
                other = g.reshape(-1, 1) * o
            fast, slow = (other, scaled) if self.config.swap_roles else (scaled, other)
            out[name] = {
                "fast": fast.reshape(g.shape),
                "slow": slow.reshape(g.shape),
                "c": calibration(layer.weight, layer.quantizer),
            }
        return out

    def _mix(self, meta) -> torch.Tensor:
        a = self.config.alpha
        return a * meta["slow"] + (1 - a) * meta["c"] * meta["fast"]

    def _lookahead(self, layer, meta, lr):
        return layer.weight - lr * self._mix(meta)

    def _update_gradient(self, layer, meta):
        if self.config.update_mode == "combined":
            return self._mix(meta)
        return meta["c"] * meta["fast"]

    def _extra_state(self):
        return {"hgs": self.hgs.state_dict(), "hidden": self._hidden}

    def _load_extra_state(self, state):
        if "hgs" in state:
            self.hgs.load_state_dict(state["hgs"])
        self._hidden = dict(state.get("hidden", {}))


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config.method`` for a binarized ``model``: torch Adam/SGD for ``"ste"`` (spec
    §4), :class:`MetaQuantOptimizer` or :class:`FSGOptimizer` otherwise."""
    _validate(config)
    if config.method == "ste":
        binary_layers(model)  # clear error for a model that was not binarized
        if config.base_optimizer == "adam":
            return torch.optim.Adam(
                model.parameters(),
                lr=config.lr,
                betas=tuple(config.betas),
                eps=config.eps,
                weight_decay=config.weight_decay,
            )
        if config.base_optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.sgdm_weight_decay
        )
    kwargs = {k: v for k, v in asdict(config).items() if k != "method"}
    if config.method == "fsg":
        return FSGOptimizer(model, **kwargs)
    return MetaQuantOptimizer(model, config.method, **kwargs)
