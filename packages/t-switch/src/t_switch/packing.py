"""Group bit packing of ternary switches ``S in {-1, 0, +1}^n`` (official
``merge_vit/compress_util.py:compress_to_bitarray`` at 68bfda8).

Format (per tensor, group size ``g``, flattened in row-major order, the last group padded with zeros):

* ``ceil(n / g)`` **group-flag bits** (1 when the group holds a non-zero entry), then
* for each non-zero group, in order: ``g`` **position bits** (``|S_i|``) followed by one **sign bit**
  per non-zero entry (1 = +1, 0 = -1).

Total ``ceil(n/g) + g * G_nz + nnz`` bits, written MSB-first into ``uint8`` bytes (the byte layout of
``bitarray.tofile`` used by the official code, so a payload of a tensor with ``n % g == 0`` is
byte-identical to the official ``.bin`` file). This is ``layout="interleaved"`` (default, = official code).

The interleaved stream is sequential to decode (where a record starts depends on the previous
records' position bits). :func:`pack_ternary` therefore also returns a *seek table*: the bit offset
of every ``seek_every``-th record (int64, about ``64 / (seek_every * g)`` bits per entry, reported
separately), which lets :func:`unpack_ternary` decode all chunks in lock-step with vectorised tensor
ops. ``layout="planar"`` (ours) stores the same bits in a different order (all flags, then all
position bits, then all sign bits): identical size, decodable without a seek table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "LAYOUTS",
    "PackedTensor",
    "default_seek_every",
    "pack_ternary",
    "ternary_bits",
    "ternary_counts",
    "unpack_ternary",
]

LAYOUTS = ("interleaved", "planar")


def ternary_bits(numel: int, group_size: int, groups_nonzero: int, nnz: int) -> int:
    """Bit count of the format: ``ceil(n/g) + g * G_nz + nnz``."""
    return math.ceil(numel / group_size) + group_size * groups_nonzero + nnz


def _check_ternary(S: Tensor) -> Tensor:
    if not isinstance(S, Tensor):
        raise TypeError(f"expected a Tensor, got {type(S).__name__}")
    if S.is_complex():
        raise TypeError("complex tensors cannot be packed")
    if S.is_floating_point() and not bool(torch.isfinite(S).all()):
        raise ValueError("ternary tensor contains NaN or inf")
    flat = S.reshape(-1)
    if flat.numel() and not bool(((flat == 0) | (flat == 1) | (flat == -1)).all()):
        raise ValueError("pack_ternary expects values in {-1, 0, +1}")
    return flat.to(torch.int8)


def _groups(S: Tensor, group_size: int) -> tuple[Tensor, int]:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    flat = _check_ternary(S)
    n = flat.numel()
    G = math.ceil(n / group_size)
    pad = G * group_size - n
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(G, group_size), n


def ternary_counts(S: Tensor, group_size: int = 4) -> tuple[int, int, int]:
    """``(numel, G_nz, nnz)`` of a ternary tensor without packing it."""
    groups, n = _groups(S, group_size)
    nz = groups.ne(0)
    return n, int(nz.any(1).sum()), int(nz.sum())


@dataclass(frozen=True)
class PackedTensor:
    """A packed ternary tensor: ``data`` (uint8 payload) plus what is needed to decode it."""

    data: Tensor
    shape: tuple[int, ...]
    group_size: int
    nbits: int
    groups_nonzero: int
    nnz: int
    layout: str = "interleaved"
    seek: Tensor | None = None
    seek_every: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def payload_bytes(self) -> int:
        return int(self.data.numel())

    @property
    def seek_bytes(self) -> int:
        return 0 if self.seek is None else int(self.seek.numel()) * 8


def _to_bytes(bits: Tensor) -> Tensor:
    return torch.from_numpy(np.packbits(bits.numpy().astype(np.uint8, copy=False)))


def default_seek_every(groups_nonzero: int) -> int:
    # ~sqrt(G_nz) records per chunk balances the python loop length and the vector width.
    return max(64, int(math.isqrt(max(groups_nonzero, 1))))


def _group_codes(bits: np.ndarray, g: int) -> np.ndarray:
    """Row-wise MSB-first integer code of a ``[G, g]`` 0/1 uint8 array (g <= 8)."""
    if g in (1, 2, 4, 8):
        # multiply-shift on the little-endian word: multiplier byte j = 2^j, so product byte g-1 is
        # sum_i b_i 2^(g-1-i) (MSB-first code) and lower bytes stay < 2^g (no carries)
        word = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[g]
        mult = sum(1 << (9 * j) for j in range(g))
        w = np.ascontiguousarray(bits).view(word).reshape(-1)
        return ((w * word(mult)) >> word(8 * (g - 1))).astype(np.uint8)
    return np.packbits(bits, axis=1)[:, 0] >> np.uint8(8 - g)


_LUT_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _record_tables(g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``REC[pc * 2^g + sc]`` = the record bits (position bits, compacted sign bits, zero padding) of a
    group with position code ``pc`` and sign code ``sc``; ``VALID[pc]`` marks its ``g + cnt`` bits."""
    if g not in _LUT_CACHE:
        P = 1 << g
        shifts = g - 1 - np.arange(g)
        posbits = ((np.arange(P)[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
        cnt = posbits.sum(1)
        rec = np.zeros((P, P, 2 * g), np.uint8)
        rec[:, :, :g] = posbits[:, None, :]
        sgnbits = ((np.arange(P)[:, None] >> shifts[None, :]) & 1).astype(np.uint8)  # [sc, g]
        for pc in range(P):
            nzj = np.nonzero(posbits[pc])[0]
            rec[pc, :, g : g + nzj.size] = sgnbits[:, nzj]
        valid = np.arange(2 * g)[None, :] < (g + cnt)[:, None]
        recv = np.ascontiguousarray(rec.reshape(P * P, 2 * g)).view(np.dtype((np.void, 2 * g)))[:, 0]
        _LUT_CACHE[g] = (recv, valid, cnt)
    return _LUT_CACHE[g]


def _interleaved_stream_lut(groups: Tensor, flags: Tensor, Gnz: int) -> tuple[Tensor, Tensor]:
    """Interleaved bit stream via look-up tables (g <= 8): one table row per non-zero group."""
    g = groups.shape[1]
    A = groups.numpy()
    fl = flags.numpy()
    nzA = A[fl]
    pc = _group_codes((nzA != 0).view(np.uint8), g)
    sc = _group_codes((nzA > 0).view(np.uint8), g)
    recv, valid, cnt_t = _record_tables(g)
    rec = recv[pc.astype(np.intp) * (1 << g) + sc].view(np.uint8).reshape(Gnz, 2 * g)
    bits = np.concatenate([fl.view(np.uint8), rec[valid[pc]]])
    lengths = torch.from_numpy(cnt_t[pc].astype(np.int64)) + g
    return torch.from_numpy(bits), torch.cumsum(lengths, 0) - lengths


def _interleaved_stream_generic(nz_pos: Tensor, nz_sgn: Tensor, flags: Tensor) -> tuple[Tensor, Tensor]:
    """Interleaved bit stream for any group size (index scatter of every bit)."""
    Gnz, g = nz_pos.shape
    cnt = nz_pos.sum(1)
    lengths = g + cnt
    starts = torch.cumsum(lengths, 0) - lengths
    G = int(flags.numel())
    stream = torch.zeros(G + g * Gnz + int(cnt.sum()), dtype=torch.bool)
    stream[:G] = flags
    base = starts + G
    stream[(base[:, None] + torch.arange(g)).view(-1)] = nz_pos.reshape(-1)
    rank = nz_pos.cumsum(1) - 1  # sign bit of the k-th non-zero entry sits at base + g + k
    rows = torch.arange(Gnz)[:, None].expand(-1, g)[nz_pos]
    stream[base[rows] + g + rank[nz_pos]] = nz_sgn[nz_pos]
    return stream, starts


def pack_ternary(
    S: Tensor, group_size: int = 4, layout: str = "interleaved", seek_every: int | None = None
) -> PackedTensor:
    """Pack a ternary tensor of any shape into the bit format of this module."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    S = S.detach().cpu()
    groups, n = _groups(S, group_size)
    g = group_size
    pos = groups.ne(0)
    flags = pos.any(1)
    Gnz = int(flags.sum())
    nnz = int(pos.sum())
    if layout == "planar" or g > 8:
        nz_pos = pos[flags]  # [G_nz, g]
        nz_sgn = groups[flags] > 0  # sign bit 1 = +1
    seek = None
    every = 0
    starts = None
    if layout == "planar":
        stream = torch.cat([flags, nz_pos.reshape(-1), nz_sgn[nz_pos]])
    elif g <= 8:
        stream, starts = _interleaved_stream_lut(groups, flags, Gnz)
    else:
        stream, starts = _interleaved_stream_generic(nz_pos, nz_sgn, flags)
    if layout == "interleaved":
        every = seek_every or default_seek_every(Gnz)
        seek = starts[::every].to(torch.int64).contiguous()
    nbits = int(stream.numel())
    expected = ternary_bits(n, g, Gnz, nnz)
    if nbits != expected:  # internal invariant of the format
        raise RuntimeError(f"packed {nbits} bits, format says {expected}")
    return PackedTensor(_to_bytes(stream), tuple(S.shape), g, nbits, Gnz, nnz, layout, seek, every)


def unpack_ternary(p: PackedTensor, dtype: torch.dtype = torch.int8) -> Tensor:
    """Inverse of :func:`pack_ternary`: the ternary tensor with its original shape."""
    g = p.group_size
    n = p.numel
    G = math.ceil(n / g)
    if p.data.dtype != torch.uint8 or p.data.dim() != 1:
        raise ValueError("packed payload must be a 1-D uint8 tensor")
    if p.data.numel() * 8 < p.nbits or p.nbits < G:
        raise ValueError(f"packed payload too short: {p.data.numel()} bytes for {p.nbits} bits")
    bits = torch.from_numpy(np.unpackbits(p.data.numpy(), count=p.nbits))  # uint8 0/1
    flags = bits[:G].bool()
    nz_idx = flags.nonzero().squeeze(1)
    Gnz = int(nz_idx.numel())
    if Gnz != p.groups_nonzero:
        raise ValueError(f"corrupt payload: {Gnz} non-zero group flags, header says {p.groups_nonzero}")
    data = bits[G:].to(torch.int8)
    out = torch.zeros(G, g, dtype=torch.int8)
    if Gnz:
        if p.layout == "planar":
            posb = data[: Gnz * g].view(Gnz, g).bool()
            signs = data[Gnz * g :].bool()
            if signs.numel() != int(posb.sum()):
                raise ValueError("corrupt payload: sign bits do not match position bits")
            vals = torch.zeros(Gnz, g, dtype=torch.int8)
            vals[posb] = torch.where(signs, 1, -1).to(torch.int8)
        elif p.layout == "interleaved":
            vals = _decode_interleaved(data, Gnz, g, p)
        else:
            raise ValueError(f"unknown layout {p.layout!r}")
        out[nz_idx] = vals
    return out.view(-1)[:n].view(p.shape).to(dtype)


def _decode_interleaved(data: Tensor, Gnz: int, g: int, p: PackedTensor) -> Tensor:
    """Decode all seek-table chunks in lock-step: one vectorised step per record of a chunk."""
    if p.seek is None or p.seek_every < 1:
        raise ValueError("interleaved payload needs its seek table to be decoded")
    every = p.seek_every
    ptr = p.seek.clone().to(torch.int64)
    C = int(ptr.numel())
    if C != math.ceil(Gnz / every):
        raise ValueError("corrupt payload: seek table does not match the number of non-zero groups")
    last = max(int(data.numel()) - 1, 0)
    ar = torch.arange(g)
    buf = torch.empty(every, C, g, dtype=torch.int8)
    for t in range(every):
        idx = (ptr[:, None] + ar).clamp_(max=last)
        posb = data[idx]  # [C, g] 0/1
        cnt = posb.sum(1)
        sb = data[(idx + g).clamp_(max=last)]
        rank = (posb.cumsum(1) - 1).clamp_(min=0)
        buf[t] = (posb * (2 * sb.gather(1, rank) - 1)).to(torch.int8)
        ptr += g + cnt
    vals = buf.transpose(0, 1).reshape(C * every, g)[:Gnz]
    nnz = int(vals.ne(0).sum())
    if nnz != p.nnz or int(data.numel()) != g * Gnz + nnz:
        raise ValueError("corrupt payload: decoded record lengths do not match the header")
    return vals
