"""MRaM, the memory representation adaptive module (paper Fig. 1 (c); official ``utils/model_utils.py:CodebookVotingLogitsDecoder`` and the
``values`` of ``utils/kvb_core.py:KeyValueBottleneck``, commit b8a41c4).

A value table ``V ∈ R^{C×P×K_tot}``: for every key of every codebook a vector of class scores.
Retrieval reads ``r_{b,c} = V[c, j*(b,c)]``; the readout ("codebook voting") is
``ℓ^M_b = ν · (1/C) Σ_c r_{b,c}``. Only the retrieved rows receive gradient. The table is stored
flat (``[C·P, K_tot]``) so that retrieval is an embedding lookup and, with ``sparse=True``, the
gradient is a sparse tensor (for ``torch.optim.SparseAdam``: only the retrieved rows move).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MRaM"]


class MRaM(nn.Module):
    def __init__(
        self,
        num_codebooks: int,
        num_keys: int,
        num_classes: int,
        init: str = "zeros",
        vote_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_codebooks, self.num_keys, self.num_classes = num_codebooks, num_keys, num_classes
        self.vote_scale = vote_scale
        self.values = nn.Parameter(torch.zeros(num_codebooks * num_keys, num_classes))
        self.reset(init)

    @property
    def table(self) -> torch.Tensor:
        """The value table as ``[C, P, K_tot]`` (a view)."""
        return self.values.view(self.num_codebooks, self.num_keys, self.num_classes)

    @torch.no_grad()
    def reset(self, init: str = "zeros", generator: torch.Generator | None = None) -> None:
        """Re-initialise the values (``zeros`` after SMU construction in the code; ``rand``/``randn``)."""
        if init == "zeros":
            self.values.zero_()
        elif init == "rand":
            self.values.copy_(torch.rand(self.values.shape, generator=generator))
        elif init == "randn":
            self.values.copy_(torch.randn(self.values.shape, generator=generator))
        else:
            raise ValueError(f"unknown values_init {init!r}")

    def flat_index(self, index: torch.Tensor) -> torch.Tensor:
        """``(c, j) → c·P + j`` for a ``[n, C]`` key index."""
        if index.ndim != 2 or index.shape[1] != self.num_codebooks:
            raise ValueError(f"key index must be [n, {self.num_codebooks}], got {tuple(index.shape)}")
        return index + torch.arange(self.num_codebooks, device=index.device) * self.num_keys

    def retrieve(self, index: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """``r_{b,c} = V[c, index[b, c]]``: ``[n, C, K_tot]``."""
        return F.embedding(self.flat_index(index), self.values, sparse=sparse)

    def vote(self, retrieved: torch.Tensor) -> torch.Tensor:
        """Codebook voting ``ν · mean_c r_{b,c}``: ``[n, K_tot]``."""
        return self.vote_scale * retrieved.mean(dim=1)

    def forward(self, index: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        return self.vote(self.retrieve(index, sparse=sparse))

    def value_bytes(self) -> int:
        return self.values.numel() * self.values.element_size()
