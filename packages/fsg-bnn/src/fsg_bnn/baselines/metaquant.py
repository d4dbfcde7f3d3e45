"""MetaQuant (Chen, Wang, Pan, NeurIPS 2019): one coordinate-wise meta net generates the gradient of the
pre-quantized weights; the baseline family FSG is compared with.

Meta nets as in the official code (two-tiger/FSG @ 9559b30, a fork of csyhhu/MetaQuant):
``meta_utils/meta_network.py:MetaFC`` (FCGrad), ``MetaDesignedMultiFC`` (MultiFC), ``MetaLSTMFC`` (LSTMFC
and its variants) and ``MetaMambaHistory`` / ``MetaS4History`` / ``MetaS5Block`` (slow net alone);
generation in ``meta_utils/helpers.py:meta_gradient_generation``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from fsg_bnn.config import METAQUANT_METHODS, OptimConfig
from fsg_bnn.hgs import HistoricalGradientStorage
from fsg_bnn.hypernets import LSTMFC, FCGrad, MultiFC, SlowNet
from fsg_bnn.lookahead import MetaGradientOptimizer, as_config
from fsg_bnn.quant import calibration

__all__ = ["MetaQuantOptimizer"]


class MetaQuantOptimizer(MetaGradientOptimizer):
    """MetaQuant (Chen et al., NeurIPS 2019) with one meta net ``meta``.

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
        cfg = as_config(config, meta, kwargs if lr is None else {"lr": lr, **kwargs})
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
