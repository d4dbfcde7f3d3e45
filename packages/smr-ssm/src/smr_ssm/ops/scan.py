"""Diagonal linear recurrences ``h_k = a_k * h_{k-1} + b_k`` (real or complex), spec §7 ``ops.scan``.

Used by S5 (per-step ``Lambda_bar_k``), by S4D/Mega when per-step timesteps make them time-varying,
and by the recurrent mode of the LTI layers. Three algorithms with equal results:

* ``"loop"``: one step per position (the reference);
* ``"assoc"``: Hillis-Steele associative scan, ``ceil(log2 L)`` vectorised levels of the operator
  ``(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)``;
* ``"chunked"`` (default): two levels, ``T ~ sqrt(L)`` steps inside all chunks at once plus ``L/T``
  steps across chunk boundaries; only multiplies the given factors, never divides.

All are differentiable with autograd (complex included).
"""

from __future__ import annotations

import math

import torch

__all__ = ["SCAN_MODES", "linear_scan"]

SCAN_MODES = ("chunked", "assoc", "loop")


def _loop(a, b, h0):
    L = b.shape[1]
    a = a.expand_as(b)
    h = h0 if h0 is not None else torch.zeros_like(b[:, 0])
    out = []
    for k in range(L):
        h = a[:, k] * h + b[:, k]
        out.append(h)
    return torch.stack(out, dim=1)


def _assoc(a, b, h0):
    a = a.expand_as(b)
    if h0 is not None:
        b = torch.cat([b[:, :1] + a[:, :1] * h0.unsqueeze(1), b[:, 1:]], dim=1)
    L = b.shape[1]
    off = 1
    while off < L:
        b = torch.cat([b[:, :off], a[:, off:] * b[:, :-off] + b[:, off:]], dim=1)
        a = torch.cat([a[:, :off], a[:, off:] * a[:, :-off]], dim=1)
        off *= 2
    return b


def _chunked(a, b, h0, chunk):
    Bsz, L = b.shape[:2]
    rest = b.shape[2:]
    T = chunk or max(1, int(round(math.sqrt(L))))
    K = -(-L // T)
    a = a.expand_as(b)
    pad = K * T - L
    if pad:
        a = torch.cat([a, torch.ones_like(a[:, :1]).expand(Bsz, pad, *rest)], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1]).expand(Bsz, pad, *rest)], dim=1)
    av = a.reshape(Bsz, K, T, *rest)
    bv = b.reshape(Bsz, K, T, *rest)
    h, p = bv[:, :, 0], av[:, :, 0]
    hs, ps = [h], [p]
    for t in range(1, T):
        h = av[:, :, t] * h + bv[:, :, t]
        p = av[:, :, t] * p
        hs.append(h)
        ps.append(p)
    carry = [h0 if h0 is not None else torch.zeros_like(h[:, 0])]
    for k in range(K - 1):
        carry.append(h[:, k] + p[:, k] * carry[-1])
    hin = torch.stack(carry, dim=1).unsqueeze(2)  # (B, K, 1, ...)
    out = torch.stack(hs, dim=2) + torch.stack(ps, dim=2) * hin
    return out.reshape(Bsz, K * T, *rest)[:, :L]


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    mode: str = "chunked",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """All states of ``h_k = a_k * h_{k-1} + b_k`` (``h_{-1} = h0``, zeros by default).

    ``b``: ``(batch, L, ...)``; ``a`` broadcastable to ``b`` (e.g. ``(1, 1, P)`` for an LTI system);
    ``h0``: ``(batch, ...)``. Returns ``(batch, L, ...)`` in ``b``'s dtype (complex allowed).
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"unknown scan mode {mode!r}; valid: {list(SCAN_MODES)}")
    if b.ndim < 2:
        raise ValueError(f"b must be (batch, length, ...); got shape {tuple(b.shape)}")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as exc:
        raise ValueError(f"a {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}") from exc
    if h0 is not None and tuple(h0.shape) != (b.shape[0], *b.shape[2:]):
        raise ValueError(f"h0 must be {(b.shape[0], *b.shape[2:])}; got {tuple(h0.shape)}")
    if b.shape[1] == 0:
        return b
    if mode == "loop":
        return _loop(a, b, h0)
    if mode == "assoc":
        return _assoc(a, b, h0)
    return _chunked(a, b, h0, chunk_size)
