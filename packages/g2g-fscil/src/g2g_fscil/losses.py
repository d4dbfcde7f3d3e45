"""C-FSCIL's training objectives, shared by G2G and V2V (IBM/constrained-FSCIL, commit cff95a7).

* :func:`episode_bce_loss`: meta-training loss, BCE between the normalised weightings and the one-hot
  labels (``run_FSCIL.py:metatrain_baseFSCIL`` with ``loss_function=bce``).
* :func:`cosine_align_loss`: session retraining of ``g_phi``, ``-mean cos(pred, target)``
  (``torch_blocks.py:myCosineLoss``; ``rho`` is applied by the caller).

The method's own losses live with their components: LGP in :mod:`g2g_fscil.lgp`, CAG2G in
:mod:`g2g_fscil.cag2g`, C-FSCIL's prototype nudging in :mod:`g2g_fscil.baselines.v2v`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cosine_align_loss", "episode_bce_loss"]


def episode_bce_loss(w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``BCE(w, onehot(labels))`` averaged over all entries; ``w`` in [0, 1] (normalised weightings)."""
    if w.ndim != 2 or labels.ndim != 1 or labels.shape[0] != w.shape[0]:
        raise ValueError(f"expected w [B, C] and labels [B], got {tuple(w.shape)} and {tuple(labels.shape)}")
    onehot = F.one_hot(labels.long(), w.shape[1]).to(w.dtype)
    return F.binary_cross_entropy(w.clamp(1e-7, 1 - 1e-7), onehot)


def cosine_align_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean cos(pred, target)`` over the last dimension (C-FSCIL ``myCosineLoss`` after ``rho``)."""
    return -F.cosine_similarity(pred, target, dim=-1, eps=1e-8).mean()
