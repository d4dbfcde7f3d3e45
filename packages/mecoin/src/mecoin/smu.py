"""SMU, the structured memory unit: codebooks of keys (official ``utils/kvb_core.py:KeyValueBottleneck``,
commit b8a41c4) or one key per class (ours, the abstract's "prototypes of learned categories").

Codebook layout (default, the official code): keys ``K ∈ R^{C×P×d_k}`` start as N(0, 1); one
construction pass over the base pre-training nodes runs an EMA k-means step per codebook:

1. ``j*(b, c) = argmin_j ‖q̃_{b,c} − K_{c,j}‖²``;
2. counts ``n_{c,j}`` and sums ``Σ_{c,j}`` of the queries assigned to each key;
3. ``N ← γN + (1−γ)n``, ``S ← γS + (1−γ)Σ``;
4. Laplace smoothing ``Ñ_{c,j} = (N_{c,j}+ε)/(Σ_j N_{c,j} + Pε) · Σ_j N_{c,j}``; ``K = S / Ñ``;
5. dead-code reset: keys with ``N_{c,j} < τ`` become queries of the batch drawn with replacement.

The keys are then frozen for every session. Class layout (ours): key ``K_{c,k}`` is the mean of the
support queries of class ``k``, written when the class first appears; only written keys are matched.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StructuredMemoryUnit", "squared_distances"]


def squared_distances(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``‖q_{b,c} − K_{c,j}‖²`` as ``‖q‖² − 2 q·k + ‖k‖²`` (the code's expansion): ``[n, C, P]``."""
    qq = (q * q).sum(-1, keepdim=True)  # [n, C, 1]
    kk = (keys * keys).sum(-1)  # [C, P]
    return qq - 2.0 * torch.einsum("ncd,cpd->ncp", q, keys) + kk.unsqueeze(0)


class StructuredMemoryUnit(nn.Module):
    """Keys of the memory and their EMA statistics (all buffers: keys never receive gradients)."""

    def __init__(
        self,
        num_codebooks: int,
        num_keys: int,
        key_dim: int,
        layout: str = "codebook",
        ema_decay: float = 0.95,
        eps: float = 1e-5,
        seed: int = 0,
        max_chunk_elems: int = 2**25,
    ) -> None:
        super().__init__()
        if layout not in ("codebook", "class"):
            raise ValueError(f"unknown memory layout {layout!r}")
        self.layout, self.ema_decay, self.eps = layout, ema_decay, eps
        self.max_chunk_elems = max_chunk_elems
        g = torch.Generator().manual_seed(seed)
        if layout == "codebook":
            keys = torch.randn(num_codebooks, num_keys, key_dim, generator=g)
        else:
            keys = torch.zeros(num_codebooks, num_keys, key_dim)
        self.register_buffer("keys", keys)
        self.register_buffer("ema_sum", keys.clone())
        self.register_buffer("ema_count", torch.zeros(num_codebooks, num_keys))
        self.register_buffer("active", torch.full((num_keys,), layout == "codebook"))
        self.register_buffer("frozen", torch.tensor(layout == "class"))

    @property
    def num_codebooks(self) -> int:
        return self.keys.shape[0]

    @property
    def num_keys(self) -> int:
        return self.keys.shape[1]

    @property
    def key_dim(self) -> int:
        return self.keys.shape[2]

    def chunk_size(self) -> int:
        """Nodes per retrieval chunk so that the ``[chunk, C, P]`` distance block stays bounded."""
        return max(1, self.max_chunk_elems // (self.num_codebooks * self.num_keys))

    def _check_queries(self, q: torch.Tensor) -> None:
        if q.ndim != 3 or q.shape[1:] != self.keys.shape[::2]:
            raise ValueError(
                f"queries must be [n, {self.num_codebooks}, {self.key_dim}], got {tuple(q.shape)}"
            )

    @torch.no_grad()
    def nearest(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-1 retrieval per codebook: ``(index [n, C], squared distance [n, C])`` (chunked)."""
        self._check_queries(q)
        if not bool(self.active.any()):
            raise RuntimeError("the memory holds no key yet (class layout: call write_class_keys first)")
        idx, dist = [], []
        inactive = ~self.active
        keys = self.keys
        # ‖q‖² does not change the argmin over keys: score ‖k‖² − 2 q·k in one fused batched matmul
        # per codebook ([C, n, P]) and add ‖q‖² to the minimum only.
        kk = (keys * keys).sum(-1).unsqueeze(1)  # [C, 1, P]
        if bool(inactive.any()):
            kk = kk.masked_fill(inactive.view(1, 1, -1), float("inf"))
        kt = keys.transpose(1, 2)  # [C, d, P]
        for part in q.split(self.chunk_size()):
            part = part.float()
            d = torch.baddbmm(kk, part.transpose(0, 1), kt, alpha=-2.0)  # [C, n, P]
            best = d.min(dim=-1)
            idx.append(best.indices.t())
            dist.append(best.values.t() + (part * part).sum(-1))
        return torch.cat(idx), torch.cat(dist)

    @torch.no_grad()
    def construct_step(self, q: torch.Tensor, dead_threshold: float) -> dict[str, float]:
        """One EMA k-means step on the queries ``q [n, C, d_k]`` plus dead-code reset (official ``KeyValueBottleneck.forward``,
        ``expire_codes_`` and ``utils/kvb_utils.py:laplace_smoothing``)."""
        if self.layout != "codebook":
            raise RuntimeError("construct_step applies to the codebook layout only")
        if bool(self.frozen):
            raise RuntimeError("the keys are frozen")
        self._check_queries(q)
        q = q.float()
        index, _ = self.nearest(q)  # [n, C]
        C, P, d = self.keys.shape
        flat = (index + torch.arange(C, device=q.device) * P).flatten()  # [n*C] ids into C*P
        counts = torch.zeros(C * P, device=q.device).index_add_(0, flat, torch.ones_like(flat, dtype=q.dtype))
        sums = torch.zeros(C * P, d, device=q.device).index_add_(0, flat, q.reshape(-1, d))
        counts, sums = counts.view(C, P), sums.view(C, P, d)
        g = self.ema_decay
        self.ema_count.mul_(g).add_(counts, alpha=1 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.ema_count.sum(-1, keepdim=True)
        smoothed = (self.ema_count + self.eps) / (total + P * self.eps) * total
        self.keys.copy_(self.ema_sum / smoothed.unsqueeze(-1))
        dead = self.expire_dead(q, dead_threshold)
        return {"used_keys": float((counts > 0).float().mean()), "dead_reset": float(dead.float().mean())}

    @torch.no_grad()
    def expire_dead(self, q: torch.Tensor, threshold: float, generator: torch.Generator | None = None):
        """Replace every key whose EMA count is below ``threshold`` by a random query of the batch
        (per codebook, drawn with replacement). Returns the ``[C, P]`` mask of replaced keys."""
        dead = self.ema_count < threshold
        if threshold <= 0 or not bool(dead.any()):
            return torch.zeros_like(dead)
        C, P, d = self.keys.shape
        pick = torch.randint(0, q.shape[0], (C, P), device=q.device, generator=generator)
        samples = q.transpose(0, 1).gather(1, pick.unsqueeze(-1).expand(C, P, d))  # [C, P, d]
        self.keys.copy_(torch.where(dead.unsqueeze(-1), samples, self.keys))
        return dead

    def freeze(self) -> None:
        """Freeze the keys (``update_keys=False`` in the code): no further construction step."""
        self.frozen.fill_(True)

    @torch.no_grad()
    def write_class_keys(
        self, q: torch.Tensor, y: torch.Tensor, classes: list[int], ema: bool = False
    ) -> None:
        """Class layout (ours): ``K[:, k] = mean of q̃`` over the nodes of class ``k``. A key is
        written once; with ``ema=True`` a reappearing class is updated by ``K ← γK + (1−γ)·mean``."""
        if self.layout != "class":
            raise RuntimeError("write_class_keys applies to the class layout only")
        self._check_queries(q)
        for k in classes:
            if not 0 <= k < self.num_keys:
                raise ValueError(f"class {k} has no key slot (num_classes={self.num_keys})")
            sel = y == k
            if not bool(sel.any()):
                raise ValueError(f"no labelled node of class {k} to write its key")
            mean = q[sel].float().mean(0)  # [C, d_k]
            if bool(self.active[k]) and ema:
                self.keys[:, k].mul_(self.ema_decay).add_(mean, alpha=1 - self.ema_decay)
            elif not bool(self.active[k]):
                self.keys[:, k] = mean
                self.active[k] = True

    def key_bytes(self) -> int:
        """Bytes of the keys used at inference (the EMA statistics are construction-only)."""
        return self.keys.numel() * self.keys.element_size()

    def statistics_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ema_sum, self.ema_count, self.active))
