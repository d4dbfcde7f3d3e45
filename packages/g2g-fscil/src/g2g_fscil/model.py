"""``G2GNet``: backbone + projection ``g_phi`` + explicit memory (C-FSCIL ``KeyValueNetwork`` with graphs)."""

from __future__ import annotations

import torch
from torch import nn

from g2g_fscil.backbones import build_backbone
from g2g_fscil.config import G2GConfig
from g2g_fscil.graphs import check_finite, cosine_adjacency, local_features, represent
from g2g_fscil.interaction import g2g_similarity, g2g_similarity_prepared, v2v_similarity, weightings
from g2g_fscil.memory import ExplicitMemory
from papers_shared.errors import ConfigError

__all__ = ["G2GNet", "infer_num_nodes"]

_NORMS = {
    "cifar": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@torch.no_grad()
def infer_num_nodes(backbone: nn.Module, in_channels: int, image_size: int, pool: int | None) -> int:
    if pool is not None:
        return pool * pool
    was = backbone.training
    backbone.eval()
    out = backbone(torch.zeros(1, in_channels, image_size, image_size))
    backbone.train(was)
    return out.shape[-2] * out.shape[-1]


class G2GNet(nn.Module):
    """Backbone ``f_theta`` -> local maps ``[B, M, D]`` -> ``g_phi`` (shared over nodes) -> graphs; EM read-out.

    ``forward(x)`` returns the normalised weightings over the classes in memory (``[B, n_seen]``, column
    ``j`` is class ``memory.class_ids[j]``); ``predict(x)`` returns class ids.
    """

    def __init__(
        self,
        config: G2GConfig,
        num_classes: int,
        image_size: int = 32,
        input_norm: str | None = None,
    ) -> None:
        super().__init__()
        if config.legacy_implicit_seeds:
            torch.manual_seed(0)
        self.config = config
        self.image_size = image_size
        self.backbone = build_backbone(
            config.backbone, config.in_channels, config.pretrained_backbone, config.backbone_weights
        )
        dim = self.backbone.out_dim
        self.num_nodes = infer_num_nodes(self.backbone, config.in_channels, image_size, config.local_pool)
        self.proj_dim = config.feat_dim
        if config.node_dim == "split" and config.interaction == "g2g":
            if config.feat_dim % self.num_nodes:
                raise ConfigError(
                    f"node_dim=split gives each of the M={self.num_nodes} nodes feat_dim/M dims: "
                    f"feat_dim={config.feat_dim} is not divisible by {self.num_nodes}"
                )
            self.proj_dim = config.feat_dim // self.num_nodes
        self.proj = nn.Linear(dim, self.proj_dim)
        self.head = nn.Linear(
            dim, num_classes
        )  # pre-training head on D features (ours, see README Deviations)
        self.memory = ExplicitMemory(dim, self.proj_dim, self.num_nodes)
        mean, std = _NORMS.get(input_norm, ((0.0,) * config.in_channels, (1.0,) * config.in_channels))
        if input_norm is not None and input_norm not in _NORMS:
            raise ValueError(f"input_norm must be one of {sorted(_NORMS)} or None, got {input_norm!r}")
        if len(mean) != config.in_channels:
            mean, std = (
                (sum(mean) / len(mean),) * config.in_channels,
                (sum(std) / len(std),) * config.in_channels,
            )
        self.register_buffer("in_mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("in_std", torch.tensor(std).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> G2GNet:
        """``nn.Module.train``; with ``config.freeze_bn`` the backbone's BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode and self.config.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # --- features -------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x, "input images")
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected images [B, {self.config.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        return x

    def local_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone local features ``f_i(x)``: ``[B, M, D]``."""
        x = self._check_input(x)
        return local_features(self.backbone((x - self.in_mean) / self.in_std), self.config.local_pool)

    def embed(self, f_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q, Z, A)``: V2V query ``g(GAP f)`` (before rho), nodes ``rho(g(f_i))``, cos-adjacency."""
        c = self.config
        q = self.proj(f_local.mean(1))
        z = represent(self.proj(f_local), c.representation)
        a = cosine_adjacency(z, c.edge_knn)
        return q, z, a

    def local_graph(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, z, a = self.embed(self.local_maps(x))
        return z, a

    def pretrain_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.local_maps(x).mean(1))

    # --- memory read-out ------------------------------------------------------------------------
    def similarity(self, q, z, a, keys, nodes, adj) -> torch.Tensor:
        c = self.config
        if c.interaction == "v2v":
            return v2v_similarity(q, keys, c.representation)
        return g2g_similarity(z, a, nodes, adj, c.alpha, c.node_match, c.edge_sim)

    def memory_similarity(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.memory) == 0:
            raise RuntimeError("the explicit memory is empty: write the base classes first")
        q, z, a = self.embed(self.local_maps(x))
        c = self.config
        if c.interaction == "g2g" and c.node_match == "aligned" and c.edge_sim == "cosine":
            return g2g_similarity_prepared(z, a, self.memory.prepared(c.alpha))
        nodes, adj = self.memory.graphs()
        return self.similarity(q, z, a, self.memory.vectors(), nodes, adj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        kind = c.sharpen_train if self.training else c.sharpen_eval
        return weightings(self.memory_similarity(x), kind, c.beta, c.normalize)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        out = self.memory.class_ids[self(x).argmax(1)]
        self.train(was)
        return out

    def write_memory(self, labels: torch.Tensor, x: torch.Tensor) -> None:
        """Write classes from images (no grad, eval mode)."""
        was = self.training
        self.eval()
        with torch.no_grad():
            maps = self.local_maps(x)
        self.train(was)
        c = self.config
        self.memory.write(labels, maps, self.proj, c.representation, c.edge_proto, c.edge_knn, c.node_proto)

    def rebuild_memory(self) -> None:
        self.memory.rebuild(self.proj, self.config.representation, self.config.edge_knn)

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
