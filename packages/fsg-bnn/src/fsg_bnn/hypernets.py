"""Hypernetworks ("meta nets") that generate the gradient of the pre-quantized weights.

MetaQuant's coordinate-wise nets and FSG's two nets, as in the official code (two-tiger/FSG @ 9559b30,
``meta_utils/meta_network.py``):

* :class:`FCGrad`: ``G = FC2(FC1(g))`` (1 -> h -> 1, no bias; ``MetaFC``).
* :class:`MultiFC`: ``G = g * MLP(W~)`` (bias-free linear layers, no activation by default;
  ``MetaDesignedMultiFC``); FSG's **fast net** is a 3-layer MultiFC (``FastNet``). Without an activation
  the MLP is one scalar product ``w3 . W2 . w1`` and is evaluated as such (exact, ours: speed).
* :class:`LSTMFC`: ``G = g * FC(LSTM(x))``, every weight entry a batch element, hidden state carried
  across iterations by the caller (``MetaLSTMFC``).
* :class:`SlowNet`: FSG's **slow net**: a sequence model (Mamba by default, ``MetaMambaHistory``; S4 /
  S5 for the ablations, ``MetaS4History`` / ``MetaS5Block``) over the HGS sequence with the layer's
  **LRE** token prepended. The SSM layers are :mod:`papers_shared.ssm.modules` (Mamba, real S4D, real S5).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from papers_shared.ssm.modules import BACKENDS, S4D, S5, Mamba

__all__ = [
    "FCGrad",
    "FastNet",
    "LSTMFC",
    "MultiFC",
    "NONLINEARITIES",
    "S4SequenceModel",
    "S5SequenceModel",
    "SlowNet",
]

NONLINEARITIES = (None, "relu", "tanh")


def _act(name: str | None) -> nn.Module | None:
    if name not in NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity {name!r}; use one of {list(NONLINEARITIES)}")
    return {"relu": nn.ReLU(), "tanh": nn.Tanh()}.get(name) if name else None


def _check_column(x: torch.Tensor, who: str) -> None:
    if x.ndim != 2 or x.shape[1] != 1:
        raise ValueError(f"{who} expects a column of coordinates (N, 1); got {tuple(x.shape)}")


class MultiFC(nn.Module):
    """``num_layers`` bias-free linear layers ``1 -> h -> ... -> h -> 1`` (official
    ``meta_network.py:MetaDesignedMultiFC``), optional ReLU/Tanh between them (none by default, as the
    official ``--meta_nonlinear``).

    Without an activation the layers compose to one ``1 x 1`` matrix, so the forward is
    ``x * (W_k ... W_2 W_1)``: the same values and gradients as the layer-by-layer product (rounding
    aside) at the cost of a scalar multiply per coordinate (ours: speed). ``collapse=False`` keeps the
    layer-by-layer evaluation (the reference the tests compare with).
    """

    def __init__(
        self, hidden: int = 100, num_layers: int = 3, nonlinearity: str | None = None, collapse: bool = True
    ) -> None:
        super().__init__()
        self.collapse = collapse and nonlinearity is None
        if num_layers < 1 or hidden < 1:
            raise ValueError("MultiFC needs num_layers >= 1 and hidden >= 1")
        layers: list[nn.Module] = []
        for i in range(num_layers):
            fan_in = 1 if i == 0 else hidden
            fan_out = 1 if i == num_layers - 1 else hidden
            layers.append(nn.Linear(fan_in, fan_out, bias=False))
            act = _act(nonlinearity) if i < num_layers - 1 else None
            if act is not None:
                layers.append(act)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_column(x, "MultiFC")
        if not self.collapse:
            return self.net(x)
        product = self.net[0].weight  # (h, 1)
        for layer in list(self.net)[1:]:
            product = layer.weight @ product  # ends (1, 1)
        return x * product.reshape(()).to(x.dtype)


FastNet = MultiFC


class FCGrad(MultiFC):
    """MetaQuant's FC-Grad: ``G = FC2(FC1(g))`` (two bias-free layers on the gradient itself; official
    ``meta_network.py:MetaFC``)."""

    def __init__(self, hidden: int = 100, nonlinearity: str | None = None) -> None:
        super().__init__(hidden, 2, nonlinearity)


class LSTMFC(nn.Module):
    """MetaQuant's LSTMFC (official ``meta_network.py:MetaLSTMFC``): ``LSTM(1 -> h)`` over a short sequence per coordinate (length 1, or 2 for
    the "merge" variant), then ``Linear(h -> 1)`` on the last hidden state.

    ``forward(x, hidden)`` with ``x`` of shape ``(steps, N, 1)`` returns ``(out (N, 1), (h, c))``.
    """

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(input_size=1, hidden_size=hidden, num_layers=1)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None = None):
        if x.ndim != 3 or x.shape[-1] != 1:
            raise ValueError(f"LSTMFC expects (steps, N, 1); got {tuple(x.shape)}")
        _, (h, c) = self.lstm(x, hidden)
        return self.fc(h[-1]), (h, c)


SlowKind = Literal["mamba", "s4", "s5"]


class SlowNet(nn.Module):
    """FSG's slow net (official ``meta_network.py:MetaMambaHistory``): ``out = Seq([E[l]; H_l])[:, 1:]``.

    ``E = nn.Embedding(num_layers, 1)`` (N(0, 1) init) holds one Layer Recognition Embedding per
    binarized layer; it is prepended at position 0 and the output there is dropped, so the output has
    the input's length. Because the model is causal, the token acts as a layer-specific initial
    condition. ``use_lre=False`` skips the token (ablation). Sequences of several layers can be
    batched: ``layer_idx`` is then a ``(batch,)`` tensor.

    ``kind="mamba"``: one Mamba block ``(d_model=1, d_state, d_conv, expand)`` (defaults 16, 8, 100, the
    official ``--d_state/--d_conv/--expand``; the shared :class:`~papers_shared.ssm.modules.Mamba` on
    :func:`papers_shared.ssm.ops.selective_scan`); ``"s4"`` / ``"s5"``: the
    ablation sequence models :class:`S4SequenceModel` / :class:`S5SequenceModel`.
    """

    def __init__(
        self,
        num_layers: int,
        kind: SlowKind = "mamba",
        d_state: int = 16,
        d_conv: int = 8,
        expand: int = 100,
        use_lre: bool = True,
        s4_d_model: int = 100,
        s5_dim: int = 8,
        s5_state: int = 8,
        backend: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; use one of {list(BACKENDS)}")
        self.kind, self.use_lre, self.num_layers = kind, use_lre, num_layers
        self.layer_embedding = nn.Embedding(num_layers, 1)
        if kind == "mamba":
            self.model: nn.Module = Mamba(1, d_state, d_conv, expand, backend=backend, chunk_size=chunk_size)
        elif kind == "s4":
            self.model = S4SequenceModel(s4_d_model, d_state)
        elif kind == "s5":
            self.model = S5SequenceModel(s5_dim, s5_state)
        else:
            raise ValueError(f"unknown slow-net kind {kind!r}; use 'mamba', 's4' or 's5'")

    def forward(self, seq: torch.Tensor, layer_idx: int | torch.Tensor) -> torch.Tensor:
        if seq.ndim != 3 or seq.shape[-1] != 1:
            raise ValueError(f"SlowNet expects a (batch, length, 1) sequence; got {tuple(seq.shape)}")
        if not torch.isfinite(seq).all():
            raise ValueError("SlowNet input contains NaN or inf (a non-finite gradient reached the HGS)")
        if not self.use_lre:
            return self.model(seq)
        idx = torch.as_tensor(layer_idx, device=seq.device, dtype=torch.long).reshape(-1)
        if idx.numel() == 1 and seq.shape[0] > 1:
            idx = idx.expand(seq.shape[0])
        if idx.numel() != seq.shape[0]:
            raise ValueError(f"layer_idx has {idx.numel()} entries for a batch of {seq.shape[0]} sequences")
        if (idx < 0).any() or (idx >= self.num_layers).any():
            raise IndexError(f"layer index out of range 0..{self.num_layers - 1}: {idx.tolist()}")
        token = self.layer_embedding(idx).unsqueeze(1).to(seq.dtype)  # (batch, 1, 1)
        return self.model(torch.cat([token, seq], dim=1))[:, 1:]

    def forward_packed(
        self, seqs: list[torch.Tensor], layer_idx: list[int], keep_last: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Sequences of different lengths in one call (ours, speed): ``seqs[i]`` of shape ``(L_i,)`` gives
        ``forward(seqs[i].view(1, -1, 1), layer_idx[i]).view(-1)``, or only its last ``keep_last[i]``
        outputs. The Mamba slow net runs them packed end to end
        (:meth:`papers_shared.ssm.modules.Mamba.forward_packed`, one compiled call on CPU) and gathers
        the kept outputs with one index (one backward pass instead of one per sequence); S4/S5 run one
        sequence at a time."""
        if len(seqs) != len(layer_idx) or (keep_last is not None and len(keep_last) != len(seqs)):
            raise ValueError(f"{len(seqs)} sequences but {len(layer_idx)} layer indices / keep_last entries")
        keep = [s.numel() for s in seqs] if keep_last is None else list(keep_last)
        if any(k < 0 or k > s.numel() for k, s in zip(keep, seqs)):
            raise ValueError("keep_last[i] must be in 0..len(seqs[i])")
        if self.kind != "mamba" or not seqs:
            outs = [self(s.view(1, -1, 1), i).view(-1) for s, i in zip(seqs, layer_idx)]
            return [o[o.numel() - k :] for o, k in zip(outs, keep)]
        flat = torch.cat([s.reshape(-1) for s in seqs])
        if not torch.isfinite(flat).all():
            raise ValueError("SlowNet input contains NaN or inf (a non-finite gradient reached the HGS)")
        lengths = [s.numel() for s in seqs]
        if self.use_lre:
            idx = torch.as_tensor(layer_idx, dtype=torch.long, device=flat.device)
            if (idx < 0).any() or (idx >= self.num_layers).any():
                raise IndexError(f"layer index out of range 0..{self.num_layers - 1}: {idx.tolist()}")
            tokens = self.layer_embedding(idx).reshape(-1).to(flat.dtype)
            parts = [p for i, s in enumerate(seqs) for p in (tokens[i : i + 1], s.reshape(-1))]
            flat = torch.cat(parts)
            lengths = [n + 1 for n in lengths]
        cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
        out = self.model.forward_packed(flat, cu)
        ends = cu[1:].tolist()
        index = torch.cat([torch.arange(e - k, e) for e, k in zip(ends, keep)]).to(out.device)
        return list(out[index].split(keep))


class S4SequenceModel(nn.Module):
    """The official ``meta_network.py:MetaS4History`` layout: ``Linear(1 -> H)``, one S4 layer with a
    residual and a post-LayerNorm, ``Linear(H -> 1)``. The S4 layer is the shared real-diagonal
    :class:`~papers_shared.ssm.modules.S4D` (S4D-Real, GELU + GLU output; the official code uses the
    complex S4 kernel, see README Deviations)."""

    def __init__(self, d_model: int = 100, d_state: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.s4 = S4D(d_model, d_state, init="real", c_scale=0.5 / d_state**0.5, output="gelu_glu")
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        x = self.norm(self.s4(x) + x)
        return self.decoder(x)


class S5SequenceModel(nn.Module):
    """The official ``meta_network.py:MetaS5Block`` layout: ``Linear(1 -> dim)``, an S5 block (pre-norm
    S5 + GELU with a residual, pre-norm feed-forward with a residual), ``Linear(dim -> 1)``; the S5 layer
    is the shared real-diagonal :class:`~papers_shared.ssm.modules.S5`."""

    def __init__(self, dim: int = 8, state_dim: int = 8) -> None:
        super().__init__()
        self.in_linear = nn.Linear(1, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.s5 = S5(dim, state_dim, init="real")
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.out_linear = nn.Linear(dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_linear(x)
        x = x + F.gelu(self.s5(self.norm1(x)))
        x = x + self.ff(self.norm2(x))
        return self.out_linear(x)
