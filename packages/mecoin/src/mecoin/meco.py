"""MeCo, the memory construction module (MeCs in the paper's Fig. 1; official code, commit b8a41c4).

* :class:`GaussianRandomProjection` (GRP, official ``utils/projection.py:RandomDownProjection``): a fixed buffer ``Π ∈ R^{C×h×d_p}``, entries N(0, 1),
  every column ``Π[c, :, k]`` L2-normalised over ``h``; ``z_{b,c} = H_b Π[c]``.
* :class:`GraphInfo` (official ``utils/kvb_core.py:synapse``): a pre-norm Transformer block run across the nodes of the current set (one
  sequence, no positions), then ``Linear(h, C)``: one scalar per codebook, ``s ∈ R^{n×C}``.
* :class:`MemoryInteraction` (official ``utils/kvb_core.py:Attention``): ``interaction="legacy_codebook"`` reproduces the code, where the
  attention runs across the C codebooks of each query separately (the key rows of the concatenated
  ``[K; Q]`` never influence a query row, so they are not computed); ``"cross"`` (ours) lets each query
  attend over the P keys of its own codebook, the paper's wording.

The blocks use :func:`torch.nn.functional.scaled_dot_product_attention`, so large node sets run with
the memory-efficient kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GaussianRandomProjection", "GraphInfo", "MemoryInteraction", "MultiHeadAttention", "PreNormBlock"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``[B, L, d]`` tensors (``nn.MultiheadAttention`` semantics: in/out
    projections with bias, dropout on the attention weights).

    When ``d`` is not divisible by ``heads`` (``use_graphinfo=False`` gives ``d_k = 13`` with 2 heads,
    which ``nn.MultiheadAttention`` rejects) every head gets ``ceil(d / heads)`` dims and the output
    projection maps ``heads · ceil(d / heads)`` back to ``d``; otherwise it is the standard layer.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.head_dim = -(-dim // heads)
        inner = self.head_dim * heads
        self.inner = inner
        self.in_proj = nn.Linear(dim, 3 * inner)
        self.out_proj = nn.Linear(inner, dim)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``query: [B, L, d]``, ``context: [B or 1, S, d]``; ``key_mask: [S]`` bool (True = attend)."""
        context = query if context is None else context
        w_q, w_kv = self.in_proj.weight.split([self.inner, 2 * self.inner])
        b_q, b_kv = self.in_proj.bias.split([self.inner, 2 * self.inner])
        q = F.linear(query, w_q, b_q)
        k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

        if context.shape[0] != query.shape[0]:
            k, v = k.expand(query.shape[0], -1, -1), v.expand(query.shape[0], -1, -1)
        drop = self.dropout if self.training else 0.0
        mask = None if key_mask is None else key_mask.view(1, 1, 1, -1)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask, dropout_p=drop)
        return self.out_proj(out.transpose(-3, -2).flatten(-2))


class PreNormBlock(nn.Module):
    """``Y = X + Drop(MHA(LN(X)))``, ``O = Y + Drop(FFN(LN(Y)))`` with ``FFN = Linear → GELU → Linear``
    (the block of the official ``utils/kvb_core.py:synapse`` and ``Attention``). With ``context`` the attention reads keys/values from it."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.5, context_norm: bool = False) -> None:
        super().__init__()
        self.mha_norm = nn.LayerNorm(dim)
        self.mha = MultiHeadAttention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        self.context_norm = nn.LayerNorm(dim) if context_norm else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if key_mask is not None and not bool(key_mask.any()):
            y = x  # nothing to attend to (class layout before the first class): residual only
        else:
            if context is not None and self.context_norm is not None:
                context = self.context_norm(context)
            y = x + self.drop(self.mha(self.mha_norm(x), context, key_mask))
        return y + self.drop(self.ffn(self.ffn_norm(y)))


class GaussianRandomProjection(nn.Module):
    """Fixed Gaussian random projection ``Π`` (official ``utils/projection.py:RandomDownProjection``): a buffer, never trained."""

    def __init__(self, num_codebooks: int, in_dim: int, proj_dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        proj = torch.randn(num_codebooks, in_dim, proj_dim, generator=g)
        self.register_buffer("proj", F.normalize(proj, p=2, dim=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[n, h] → [n, C, d_p]``."""
        return torch.einsum("nh,chp->ncp", h, self.proj)


class GraphInfo(nn.Module):
    """Local graph-structure scalar, GraphInfo (official ``utils/kvb_core.py:synapse``): nodes of the current set attend to each other.

    ``batch="set"`` (default, the code) scores the whole set as one sequence, so a node's scalar depends
    on the other nodes of the set; ``batch="chunk"`` (ours) splits the set into chunks of ``chunk`` nodes.
    The block is permutation-equivariant (no positional encoding).
    """

    def __init__(
        self,
        hidden: int,
        num_codebooks: int,
        heads: int = 2,
        dropout: float = 0.5,
        batch: str = "set",
        chunk: int = 4096,
    ) -> None:
        super().__init__()
        self.block = PreNormBlock(hidden, heads, dropout)
        self.out = nn.Linear(hidden, num_codebooks)
        self.batch, self.chunk = batch, chunk

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[n, h] → s ∈ [n, C]``."""
        if self.batch == "chunk" and h.shape[0] > self.chunk:
            return torch.cat([self.forward_set(part) for part in h.split(self.chunk)])
        return self.forward_set(h)

    def forward_set(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(h.unsqueeze(0)).squeeze(0))


class MemoryInteraction(nn.Module):
    """Interaction of node queries with the memory (official ``utils/kvb_core.py:Attention``): ``q̃ = Block(q) W_o + b_o``.

    ``mode="legacy_codebook"``: query ``[n, C, d_k]`` is a batch of n sequences of length C.
    ``mode="cross"``: for codebook c the queries attend over the keys ``K[c] ∈ R^{P×d_k}``.
    """

    def __init__(
        self, key_dim: int, heads: int = 2, dropout: float = 0.5, mode: str = "legacy_codebook"
    ) -> None:
        super().__init__()
        if mode not in ("legacy_codebook", "cross"):
            raise ValueError(f"unknown interaction mode {mode!r}")
        self.mode = mode
        self.block = PreNormBlock(key_dim, heads, dropout, context_norm=mode == "cross")
        self.out = nn.Linear(key_dim, key_dim)

    def forward(
        self, q: torch.Tensor, keys: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``q: [n, C, d_k]`` (and ``keys: [C, P, d_k]``, optional active-key mask ``[P]`` for
        ``cross``) → ``q̃: [n, C, d_k]``."""
        if self.mode == "legacy_codebook":
            return self.out(self.block(q))
        if keys is None:
            raise ValueError("interaction='cross' needs the SMU keys")
        y = self.block(q.transpose(0, 1), context=keys, key_mask=key_mask)  # [C, n, d_k] over [C, P, d_k]
        return self.out(y).transpose(0, 1)
