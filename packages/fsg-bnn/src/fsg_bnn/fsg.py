"""FSG: Fast and Slow Gradient generation (Chen et al., AAAI 2025, arXiv 2412.11777, Fig. 1), the
optimizer that trains a binarized model with a fast net and a slow net, plus :func:`build_optimizer`
(the optimizer of any method of the config).

Behaviour follows the official code, two-tiger/FSG @ 9559b30: ``meta-quantize.py`` (loop, defaults),
``meta_utils/helpers.py:meta_fast_slow_gradient_generation`` (fast and slow grads, HGS, LRE index) and
``meta_utils/meta_quantized_module.py:MetaQuantConv.forward`` (look-ahead mix).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from fsg_bnn.config import OptimConfig
from fsg_bnn.convert import binary_layers
from fsg_bnn.hgs import HistoricalGradientStorage
from fsg_bnn.hypernets import LSTMFC, MultiFC, SlowNet
from fsg_bnn.lookahead import MetaGradientOptimizer, as_config
from fsg_bnn.quant import calibration

__all__ = ["FSGOptimizer", "build_optimizer"]


class FSGOptimizer(MetaGradientOptimizer):
    """Fast and Slow Gradient generation (FSG paper Fig. 1; official ``meta-quantize.py`` with the fast
    net ``MetaDesignedMultiFC`` and the slow net ``MetaMambaHistory``, ``helpers.py:
    meta_fast_slow_gradient_generation``).

    * fast net ``F`` (MultiFC 1-100-100-1, Adam lr 1e-2): ``G_fast = g * F(W~)``;
    * slow net ``S`` (Mamba(d_model 1, d_state 16, d_conv 8, expand 100) with LRE, Adam lr 1e-3) over
      the HGS window of ``L = 5`` gradients: ``G_slow = S([E[l]; H_l])[-n:]`` (not multiplied by ``g``,
      not calibrated);
    * look-ahead ``W_meta = W - eta (alpha G_slow + (1 - alpha) c G_fast)``, ``alpha = 0.9``;
    * update ``W.grad <- c G_fast`` (``update_mode="official"``, the code) or
      ``alpha G_slow + (1 - alpha) c G_fast`` (``"combined"``, the paper's Figure 1).

    Ablations: ``hgs_length=1`` (no HGS), ``use_lre=False``, ``alpha=0`` (slow net off: not run at all),
    ``slow_net="lstm"`` (``G_slow = g * LSTMFC(W~)``, MetaFastAndLSTM), ``"s4"``/``"s5"``,
    ``swap_roles=True`` (MetaMambaAndFC).
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
        cfg = as_config(config, "fsg", kwargs if lr is None else {"lr": lr, **kwargs})
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
        self._generations = 0  # meta-gradient generations so far (slow_net_refresh)
        self._slow_cache: dict[str, torch.Tensor] = {}

    @property
    def fast_net(self) -> nn.Module:
        return self.meta_nets["fast"]

    @property
    def slow_net(self) -> nn.Module:
        return self.meta_nets["slow"]

    def _generate(self):
        seq_net = self.meta_nets["fast" if self.config.swap_roles else "slow"]
        mlp = self.meta_nets["slow" if self.config.swap_roles else "fast"]
        # alpha = 0 (slow net off): the slow grad has weight 0 in the mix and the update, and no gradient
        # reaches the slow net, so it is not run (ours: the same results, less time)
        off = self.config.alpha == 0.0 and not self.config.swap_roles
        run_seq = isinstance(seq_net, SlowNet) and not off
        seq_out = self._slow_outputs(seq_net) if run_seq else None
        self._generations += 1
        out = {}
        for name, layer in self.layers:
            g, wt = self._inputs(name, layer)
            scaled = g.reshape(-1, 1) * mlp(wt.reshape(-1, 1))
            if off:
                other = torch.zeros_like(scaled)
            elif seq_out is not None:
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

    def _slow_outputs(self, seq_net: SlowNet) -> dict[str, torch.Tensor]:
        """The sequence net's outputs; with ``slow_net_refresh = k > 1`` (ours, an approximation) they are
        recomputed every ``k``-th generation and reused, detached, in between (the HGS windows are still
        updated every step; the slow net is trained only on refresh steps)."""
        k = self.config.slow_net_refresh
        if k > 1 and self._slow_cache and self._generations % k:
            for name, _ in self.layers:
                self.hgs.push(name, self._captured[name][0])
            return self._slow_cache
        out = self._sequence_outputs(seq_net, self.hgs)
        if k > 1:
            self._slow_cache = {name: t.detach() for name, t in out.items()}
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
        return {
            "hgs": self.hgs.state_dict(),
            "hidden": self._hidden,
            "generations": self._generations,
            "slow_cache": dict(self._slow_cache),
        }

    def _load_extra_state(self, state):
        if "hgs" in state:
            self.hgs.load_state_dict(state["hgs"])
        self._hidden = dict(state.get("hidden", {}))
        self._generations = int(state.get("generations", 0))
        self._slow_cache = dict(state.get("slow_cache", {}))


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config.method`` for a binarized ``model``: torch Adam/SGD for ``"ste"`` (the
    official ``train_baseline_quant.py``), :class:`~fsg_bnn.baselines.MetaQuantOptimizer` or
    :class:`FSGOptimizer` otherwise."""
    from fsg_bnn.baselines.metaquant import MetaQuantOptimizer

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
