"""SPADE-lite (a host the paper evaluates; this single-layer form is ours): an S4D global branch (with SMR
on its input, ours) plus
multi-head sliding-window attention, summed. SPADE puts such an S4 branch in the bottom layer of a
local-attention Transformer; the package ships this single-layer form as an example config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from papers_shared.ssm.modules import S4DState
from smr_ssm.layers.attention import KVCache, local_attention
from smr_ssm.layers.hosts import S4D

__all__ = ["SPADELite", "SPADEState"]


@dataclass
class SPADEState:
    s4d: S4DState
    kv: KVCache


class SPADELite(nn.Module):
    """``y = S4D_smr(x) + LocalAttention(x)`` (window ``window``, ``n_heads`` heads)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        n_heads: int = 4,
        window: int = 128,
        smr=None,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.window, self.causal = d_model, n_heads, window, not bidirectional
        self.s4d = S4D(d_model, d_state, dt_min=dt_min, dt_max=dt_max, smr=smr, bidirectional=bidirectional)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    @property
    def smr(self):
        return self.s4d.smr

    def _heads(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        g = self.s4d(x, timesteps)
        q, k, v = self._heads(x)
        att = local_attention(q, k, v, self.window, causal=self.causal)
        B, _, L, _ = att.shape
        return g + self.out(att.transpose(1, 2).reshape(B, L, self.d_model))

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> SPADEState:
        return SPADEState(self.s4d.allocate_state(batch_size, device, dtype), KVCache())

    def step(self, x_t: torch.Tensor, state: SPADEState | None = None, timestep: torch.Tensor | None = None):
        if state is None:
            state = self.allocate_state(x_t.shape[0], x_t.device, x_t.dtype)
        g, state.s4d = self.s4d.step(x_t, state.s4d, timestep)
        q, k, v = self._heads(x_t[:, None])
        ks, vs = state.kv.append(k, v, self.window)
        att = torch.nn.functional.scaled_dot_product_attention(q, ks, vs)  # (B, h, 1, d)
        return g + self.out(att.transpose(1, 2).reshape(x_t.shape[0], self.d_model)), state
