"""LGP, Local Graph Preservation (paper: purpose; ours: loss).

The G2G abstract (arXiv 2403.04140) says LGP strengthens local structure for G2G alignment and prevents
local feature collapse; the paper's equation could not be retrieved, so the loss is ours. All modes
compare the projected local graph ``A_ij = cos(z_i, z_j)`` (the graph G2G reads) with a target, over the
off-diagonal pairs ``i != j``:

* ``centred`` (default, ours): ``mean (A_ij - B_ij)^2`` with ``B_ij = cos(f_i - mu, f_j - mu)``, the
  backbone's local graph after removing ``mu``, the mean local feature of the batch. The backbone's local
  features come after a ReLU, so they share a non-negative offset and their raw cosines are high (about
  0.8 on the digits backbone); ``mu`` removes that offset (common to every image and position) and keeps
  what each image's local features have in common (which carries its class).
* ``preserve``: ``B_ij = cos(f_i, f_j)`` on the raw features. It anchors ``A`` at the backbone's offset-
  dominated level, so it raises the collapse index instead of lowering it.
* ``image_centred``: ``B_ij = cos(f_i - fbar(x), f_j - fbar(x))`` with the image's own mean. Centred
  vectors of one image sum to zero, so ``B``'s mean off-diagonal entry is ``-1/(M-1)`` for equal norms:
  the target forces the nodes to cancel their shared component, and with it class information.
* ``anti_collapse``: ``mean relu(A_ij - margin)``, a hinge on similarities above the margin.

The collapse index (:func:`g2g_fscil.graphs.collapse_index`) is the mean off-diagonal ``A_ij``.
"""

from __future__ import annotations

import torch

from g2g_fscil.graphs import cosine_adjacency, offdiag_vec

__all__ = ["LGP_MODES", "backbone_graph", "lgp_loss"]

LGP_MODES = ("centred", "preserve", "image_centred", "anti_collapse")


def backbone_graph(
    f_local: torch.Tensor, mode: str = "centred", knn: int | None = None, mean: torch.Tensor | None = None
) -> torch.Tensor:
    """The LGP target graph ``B [B, M, M]`` of backbone local features ``f_local [B, M, D]``.

    ``mean``: the mean local feature to remove in ``centred`` mode (default: the batch's own,
    ``f_local.mean((0, 1))``; a multi-process run passes the mean over all processes).
    """
    if mode == "centred":
        mu = f_local.mean((0, 1), keepdim=True) if mean is None else mean.reshape(1, 1, -1)
        f_local = f_local - mu
    elif mode == "image_centred":
        f_local = f_local - f_local.mean(1, keepdim=True)
    elif mode != "preserve":
        raise ValueError(f"backbone_graph mode must be centred, preserve or image_centred, got {mode!r}")
    return cosine_adjacency(f_local, knn)


def lgp_loss(
    f_local: torch.Tensor,
    z: torch.Tensor,
    mode: str = "centred",
    detach_backbone: bool = True,
    margin: float = 0.5,
    knn: int | None = None,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """LGP loss for backbone local features ``f_local [B, M, D]`` and graph nodes ``z [B, M, d]``.

    ``centred`` / ``preserve`` / ``image_centred``: ``mean_x mean_{i != j} (A_ij - B_ij)^2`` with the
    target graph of :func:`backbone_graph` (stop-gradient when ``detach_backbone``);
    ``anti_collapse``: ``mean_x mean_{i != j} relu(A_ij - margin)``. Zero (with a graph) for ``M < 2``.
    """
    if f_local.ndim != 3 or z.ndim != 3 or f_local.shape[:2] != z.shape[:2]:
        raise ValueError(
            f"expected f [B, M, D] and z [B, M, d], got {tuple(f_local.shape)}, {tuple(z.shape)}"
        )
    if mode not in LGP_MODES:
        raise ValueError(f"lgp mode must be one of {LGP_MODES}, got {mode!r}")
    if z.shape[1] < 2:
        return z.sum() * 0.0
    a = offdiag_vec(cosine_adjacency(z, knn))
    if mode == "anti_collapse":
        return torch.relu(a - margin).mean()
    f = f_local.detach() if detach_backbone else f_local
    b = offdiag_vec(backbone_graph(f, mode, knn, mean))
    return (a - b).pow(2).mean()
