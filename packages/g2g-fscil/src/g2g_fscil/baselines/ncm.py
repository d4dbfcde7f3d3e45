"""NCM (decoupled cosine classifier on a frozen backbone) and TEEN calibration (Wang et al., NeurIPS 2023).

NCM: class prototype = mean of the GAP backbone features; prediction ``argmax_c s * cos(x, p_c)`` with
temperature ``s = 16`` (the temperature does not change the argmax). TEEN calibrates every new prototype
towards the base prototypes: ``p' = (1 - w) p + w * normalize(sum_b softmax_b(tau cos(p, p_b)) p_b)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NCMClassifier", "teen_calibrate"]


def teen_calibrate(
    new: torch.Tensor, base: torch.Tensor, tau: float = 16.0, weight: float = 0.1
) -> torch.Tensor:
    """TEEN: ``(1 - w) p_hat + w * normalize(softmax(tau cos(p_hat, P_base)) @ P_base)`` on l2-normalised
    prototypes (``new [N, D]``, ``base [B, D]``)."""
    if new.ndim != 2 or base.ndim != 2 or new.shape[1] != base.shape[1]:
        raise ValueError(f"expected [N, D] and [B, D], got {tuple(new.shape)} and {tuple(base.shape)}")
    pn, bn = F.normalize(new, dim=1), F.normalize(base, dim=1)
    att = torch.softmax(tau * pn @ bn.T, dim=1)
    return (1 - weight) * pn + weight * F.normalize(att @ bn, dim=1)


class NCMClassifier(nn.Module):
    """Cosine nearest-class-mean classifier over a :class:`G2GNet` backbone (which stays frozen)."""

    def __init__(
        self,
        net: nn.Module,
        teen: bool = False,
        tau: float = 16.0,
        weight: float = 0.1,
        temperature: float = 16.0,
    ) -> None:
        super().__init__()
        self.net, self.teen, self.tau, self.weight, self.temperature = net, teen, tau, weight, temperature
        self.register_buffer("class_ids", torch.empty(0, dtype=torch.long))
        self.register_buffer("protos", torch.empty(0, net.backbone.out_dim))
        self.num_base = 0

    @torch.no_grad()
    def write(self, labels: torch.Tensor, maps: torch.Tensor, calibrate: bool = False) -> None:
        """Add the classes of ``labels`` from backbone local maps ``[K, M, D]`` (GAP = mean over nodes)."""
        g = maps.mean(1)
        cs = labels.unique(sorted=True)
        p = torch.stack([g[labels == c].mean(0) for c in cs])
        if calibrate and self.teen and self.num_base > 0:
            p = teen_calibrate(p, self.protos[: self.num_base], self.tau, self.weight)
        if not calibrate:
            self.num_base += len(cs)
        self.class_ids = torch.cat([self.class_ids, cs.to(self.class_ids.device)])
        self.protos = torch.cat([self.protos, p.to(self.protos)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.net.local_maps(x).mean(1)
        return self.temperature * F.normalize(g, dim=1) @ F.normalize(self.protos, dim=1).T

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self.class_ids[self(x).argmax(1)]
