"""Attention pieces of the secondary hosts: sliding-window attention (SPADE-lite) and chunked
single-head attention (Mega), both with key/value caches for decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["KVCache", "chunked_attention", "local_attention"]


@dataclass
class KVCache:
    """Keys/values seen so far (``(B, heads, T, d)``), trimmed to a window or reset per chunk."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    pos: int = 0
    extra: dict = field(default_factory=dict)

    def append(self, k: torch.Tensor, v: torch.Tensor, keep: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        if keep is not None and self.k.shape[2] > keep:
            self.k, self.v = self.k[:, :, -keep:], self.v[:, :, -keep:]
        self.pos += k.shape[2]
        return self.k, self.v


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, causal: bool = True
) -> torch.Tensor:
    """Sliding-window attention: position ``i`` attends to ``j`` with ``0 <= i - j < window`` (causal)
    or ``|i - j| < window``. ``q, k, v``: ``(B, heads, L, d)``. Blockwise in ``O(L * window)``: the
    sequence is cut into blocks of ``window`` and each block attends to itself and its neighbours."""
    B, h, L, d = q.shape
    w = max(1, min(window, L))
    nb = -(-L // w)
    pad = nb * w - L
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb = q.view(B, h, nb, w, d)
    kb, vb = k.view(B, h, nb, w, d), v.view(B, h, nb, w, -1)
    zeros_k, zeros_v = torch.zeros_like(kb[:, :, :1]), torch.zeros_like(vb[:, :, :1])
    prev_k, prev_v = torch.cat([zeros_k, kb[:, :, :-1]], 2), torch.cat([zeros_v, vb[:, :, :-1]], 2)
    parts_k, parts_v, offsets = [prev_k, kb], [prev_v, vb], [-w, 0]
    if not causal:
        parts_k.append(torch.cat([kb[:, :, 1:], zeros_k], 2))
        parts_v.append(torch.cat([vb[:, :, 1:], zeros_v], 2))
        offsets.append(w)
    keys, vals = torch.cat(parts_k, 3), torch.cat(parts_v, 3)  # (B, h, nb, n*w, d)
    dev = q.device
    qpos = torch.arange(nb, device=dev)[:, None, None] * w + torch.arange(w, device=dev)[None, :, None]
    kpos = (
        torch.cat([torch.arange(w, device=dev) + o for o in offsets])[None, None, :]
        + torch.arange(nb, device=dev)[:, None, None] * w
    )
    diff = qpos - kpos  # (nb, w, n*w)
    allowed = (kpos >= 0) & (kpos < L) & (diff < w) & ((diff >= 0) if causal else (diff > -w))
    out = F.scaled_dot_product_attention(qb, keys, vals, attn_mask=allowed)
    return out.reshape(B, h, nb * w, -1)[:, :, :L]


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int | None, causal: bool = True
) -> torch.Tensor:
    """Softmax attention inside chunks of ``chunk`` positions (full sequence when ``None``), Mega-chunk
    style. ``q, k``: ``(B, heads, L, d)``, ``v``: ``(B, heads, L, dv)``."""
    B, h, L, d = q.shape
    c = L if not chunk or chunk >= L else chunk
    nc = -(-L // c)
    pad = nc * c - L
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qc, kc, vc = (t.view(B, h, nc, c, t.shape[-1]) for t in (q, k, v))
    mask = None
    if pad and not causal:  # padded keys of the last chunk must not be attended to
        valid = torch.arange(nc * c, device=q.device).view(nc, 1, c) < L
        mask = valid.expand(nc, c, c)
    out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, is_causal=causal and mask is None)
    return out.reshape(B, h, nc * c, -1)[:, :, :L]
