"""The Mecoin model: frozen GNN encoder → MeCo queries → SMU retrieval → MRaM readout, plus the GNN
head that GKIM distils with (paper Fig. 1; official ``utils/model_utils.py:ModelWrapper.forward``,
commit b8a41c4).

``H_B`` (the frozen encoder's embeddings of the current node set) goes two ways:

* GNN head ``ℓ^G = W_b ReLU(W_a Dropout(stopgrad(H_B)) + b_a) + b_b`` (official ``backbone/model.py:MLP``);
* MeCo: ``q = [s, z]`` with the GraphInfo scalar ``s`` and the GRP ``z`` (:mod:`mecoin.meco`), the
  interaction ``q̃``, the nearest key per codebook in the SMU (:mod:`mecoin.smu`) and the MRaM readout
  ``ℓ^M`` (:mod:`mecoin.mram`). Prediction is ``argmax ℓ^M``.

The key index is an argmin, so no gradient reaches GraphInfo, the interaction or the keys (official
``utils/kvb_core.py:KeyValueBottleneck.forward`` retrieves with temperature 0): queries are computed without autograd and only the retrieved MRaM rows and the head learn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mecoin.config import EncoderConfig, MecoinConfig
from mecoin.graph import SessionGraphs, symmetric_edges
from mecoin.meco import GaussianRandomProjection, GraphInfo, MemoryInteraction
from mecoin.mram import MRaM
from mecoin.smu import StructuredMemoryUnit

__all__ = ["MEMORY_FORMAT", "GNNHead", "Mecoin", "MecoinOutput", "load_mecoin", "save_mecoin"]

#: ``format`` entry of the metadata of a saved Mecoin memory (safetensors).
MEMORY_FORMAT = "mecoin-memory/1"


@dataclass
class MecoinOutput:
    """Everything one forward pass produces (shapes for n nodes, C codebooks, key dim d_k)."""

    logits_mram: torch.Tensor  # [n, K_tot]
    logits_gnn: torch.Tensor  # [n, K_tot]
    key_index: torch.Tensor  # [n, C]
    key_dist: torch.Tensor  # [n, C] squared distance to the retrieved key
    query: torch.Tensor  # [n, C, d_k] q = [s, z] before the interaction
    matched_query: torch.Tensor  # [n, C, d_k] q̃, the query that is matched against the keys


class GNNHead(nn.Module):
    """The fresh MLP head of the official code (``backbone/model.py:MLP``: ``h → 64 → K_tot``, input dropout, detached input)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(self.drop(h.detach()))


class Mecoin(nn.Module):
    """Mecoin around a (pre-trained) encoder; the encoder is frozen here (paper Fig. 1 caption).

    >>> model = Mecoin(encoder, MecoinConfig(num_classes=70))
    >>> model.construct_memory(data, base_train_idx, edge_mask=base_mask)
    >>> out = model(data, node_idx, edge_mask)              # MecoinOutput
    >>> pred = model.predict(data, node_idx, seen_classes)  # [n]
    """

    def __init__(self, encoder: nn.Module, config: MecoinConfig, num_classes: int | None = None) -> None:
        super().__init__()
        cfg = config
        k_tot = num_classes if num_classes is not None else cfg.num_classes
        if k_tot is None or k_tot < 2:
            raise ValueError("Mecoin needs num_classes >= 2 (config.num_classes or the num_classes argument)")
        hidden = getattr(encoder, "out_dim", None)
        if not isinstance(hidden, int):
            raise ValueError("the encoder must expose its output width as an int attribute `out_dim`")
        self.config, self.num_classes, self.hidden = cfg, k_tot, hidden
        self.encoder = encoder
        self.freeze_encoder()
        C, d_k = cfg.num_codebooks, cfg.key_dim
        num_keys = k_tot if cfg.memory_layout == "class" else cfg.keys_per_codebook
        self.grp = GaussianRandomProjection(C, hidden, cfg.proj_dim, seed=cfg.seed)
        self.graphinfo = (
            GraphInfo(
                hidden, C, cfg.graphinfo_heads, cfg.attn_dropout, cfg.graphinfo_batch, cfg.graphinfo_chunk
            )
            if cfg.use_graphinfo
            else None
        )
        self.interaction = (
            MemoryInteraction(d_k, cfg.interaction_heads, cfg.attn_dropout, cfg.interaction)
            if cfg.use_interaction
            else None
        )
        self.smu = StructuredMemoryUnit(
            C, num_keys, d_k, cfg.memory_layout, cfg.ema_decay, cfg.laplace_eps, cfg.seed
        )
        self.mram = MRaM(C, num_keys, k_tot, cfg.values_init, cfg.vote_scale)
        self.head = GNNHead(hidden, k_tot, cfg.head_hidden, cfg.head_dropout)
        self.register_buffer("seen", torch.zeros(k_tot, dtype=torch.bool))
        # Nothing upstream of the argmin learns (retrieval is an argmin); legacy hands them to the optimiser anyway.
        for module in (self.graphinfo, self.interaction):
            if module is not None:
                module.requires_grad_(cfg.legacy)

    # ------------------------------------------------------------------ encoder
    def freeze_encoder(self) -> None:
        self.encoder.eval()
        self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> Mecoin:
        super().train(mode)
        self.encoder.eval()  # the frozen encoder always runs in eval mode (the code calls .eval())
        return self

    @torch.no_grad()
    def embed(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
        """Frozen encoder embeddings ``H`` of all nodes ``[N, h]``."""
        return self.encoder(x, edge_index, edge_weight)

    # ------------------------------------------------------------------ MeCo
    def _check_embeddings(self, h: torch.Tensor) -> None:
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[1] != self.hidden:
            raise ValueError(f"embeddings must be [n, {self.hidden}], got {getattr(h, 'shape', type(h))}")
        if not h.dtype.is_floating_point:
            raise ValueError(f"embeddings must be floating point, got {h.dtype}")
        if not bool(torch.isfinite(h).all()):
            raise ValueError("embeddings contain NaN or inf")

    @torch.no_grad()
    def queries(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, q̃)``, both ``[n, C, d_k]`` (official ``utils/kvb_core.py:BottleneckedEncoder.forward``). Set-level: ``s`` depends on the set."""
        self._check_embeddings(h)
        z = self.grp(h)
        q = torch.cat([self.graphinfo(h).unsqueeze(-1), z], dim=-1) if self.graphinfo is not None else z
        if self.interaction is None:
            return q, q
        chunk = self.config.query_chunk or self.smu.chunk_size()
        mask = None if self.smu.layout == "codebook" else self.smu.active
        parts = [self.interaction(part, self.smu.keys, mask) for part in q.split(max(chunk, 1))]
        return q, torch.cat(parts)

    @torch.no_grad()
    def key_index(self, h: torch.Tensor) -> torch.Tensor:
        """Retrieved key per codebook ``[n, C]`` for the node set ``h``."""
        return self.smu.nearest(self.queries(h)[1])[0]

    def forward_embeddings(self, h: torch.Tensor, sparse: bool = False) -> MecoinOutput:
        """Mecoin on the embeddings of one node set (the unit GraphInfo attends over)."""
        q, q_tilde = self.queries(h)
        index, dist = self.smu.nearest(q_tilde)
        return MecoinOutput(self.mram(index, sparse=sparse), self.head(h), index, dist, q, q_tilde)

    def mram_logits(self, index: torch.Tensor) -> torch.Tensor:
        """``ℓ^M`` from a precomputed key index (cheap evaluation when the queries are fixed)."""
        return self.mram(index)

    # ------------------------------------------------------------------ graph-level API
    def _graph(self, data, edge_mask: torch.Tensor | None, renormalize: bool):
        graphs = SessionGraphs(data.edge_index, data.y, renormalize=renormalize)
        if edge_mask is None:
            return graphs.full_graph()
        if edge_mask.dtype != torch.bool or edge_mask.shape != (data.edge_index.shape[1],):
            raise ValueError(
                f"edge_mask must be a bool tensor over data.edge_index ([{data.edge_index.shape[1]}])"
            )
        kept = symmetric_edges(data.edge_index[:, edge_mask], graphs.num_nodes)
        key = graphs.full[0] * graphs.num_nodes + graphs.full[1]
        return graphs.masked(torch.isin(key, kept[0] * graphs.num_nodes + kept[1]))

    def forward(
        self, data, node_idx: torch.Tensor, edge_mask: torch.Tensor | None = None, renormalize: bool = True
    ):
        """Encode ``data`` on the graph kept by ``edge_mask`` (a bool mask over ``data.edge_index``,
        e.g. ``papers_shared.data.graph.session_edge_mask``) and run Mecoin on ``node_idx``."""
        h = self.embed(data.x, *self._graph(data, edge_mask, renormalize))
        return self.forward_embeddings(h[node_idx])

    @torch.no_grad()
    def predict(
        self,
        data,
        node_idx: torch.Tensor,
        seen_classes: Sequence[int] | None = None,
        edge_mask: torch.Tensor | None = None,
        renormalize: bool = True,
    ) -> torch.Tensor:
        """``argmax ℓ^M`` over all outputs, or over ``seen_classes`` only (``mask_unseen``)."""
        was = self.training
        self.eval()
        logits = self.forward(data, node_idx, edge_mask, renormalize).logits_mram
        self.train(was)
        return self.masked_argmax(logits, seen_classes)

    def masked_argmax(self, logits: torch.Tensor, seen_classes: Sequence[int] | None) -> torch.Tensor:
        if seen_classes is None:
            return logits.argmax(-1)
        mask = torch.full((self.num_classes,), float("-inf"), device=logits.device)
        mask[torch.as_tensor(list(seen_classes), device=logits.device, dtype=torch.long)] = 0.0
        return (logits + mask).argmax(-1)

    # ------------------------------------------------------------------ memory
    def construct_memory(
        self,
        data,
        node_idx: torch.Tensor,
        edge_mask: torch.Tensor | None = None,
        renormalize: bool = True,
        graph: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[dict[str, float]]:
        """SMU construction (official ``utils/kvb_core.py:BottleneckedEncoder.prepare``): ``construct_passes`` EMA k-means passes over
        ``node_idx`` (the base pre-training nodes, one set), then freeze the keys and reset MRaM.

        ``graph`` (``(edge_index, edge_weight)``, normalised) overrides ``edge_mask``. ``legacy_shuffle_bug`` feeds row-shuffled
        features to the encoder (official ``train.py:initialize_model`` loads them with ``shuffle=True``); ``construct_train_mode`` keeps dropout on (the code).
        """
        cfg = self.config
        if cfg.memory_layout != "codebook":
            self.smu.freeze()
            self.mram.reset(cfg.values_init)
            return []
        x = data.x
        if cfg.legacy_shuffle_bug:
            x = x[torch.randperm(x.shape[0], device=x.device)]
        embeddings = self.embed(
            x, *(graph if graph is not None else self._graph(data, edge_mask, renormalize))
        )
        h = embeddings[node_idx]
        threshold = cfg.dead_threshold_factor * embeddings.shape[0] / self.smu.num_keys
        was = self.training
        self.train(cfg.construct_train_mode)
        log = [self.smu.construct_step(self.queries(h)[1], threshold) for _ in range(cfg.construct_passes)]
        self.train(was)
        self.smu.freeze()
        self.mram.reset(cfg.values_init)
        return log

    @torch.no_grad()
    def add_classes(
        self, class_ids: Sequence[int], h: torch.Tensor | None = None, y: torch.Tensor | None = None
    ):
        """Register seen classes; in the class layout also write their keys from the labelled node set
        ``h`` (``[n, h]`` embeddings of one set) with labels ``y`` (ours: the abstract's "prototypes of learned categories")."""
        ids = [int(c) for c in class_ids]
        if any(not 0 <= c < self.num_classes for c in ids):
            raise ValueError(f"class ids {ids} outside [0, {self.num_classes})")
        if self.smu.layout == "class":
            if h is None or y is None:
                raise ValueError("memory_layout='class' needs the labelled embeddings h and labels y")
            was = self.training
            self.eval()
            _, q_tilde = self.queries(h)
            self.train(was)
            self.smu.write_class_keys(q_tilde, y, ids, ema=self.config.class_key_ema)
        self.seen[ids] = True

    def seen_classes(self) -> list[int]:
        return torch.nonzero(self.seen).flatten().tolist()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the Mecoin optimiser holds: the MRaM values (plus, in legacy mode, GraphInfo and MeCo,
        which the code hands to Adam although they never receive a gradient)."""
        params = [self.mram.values]
        if self.config.legacy:
            for module in (self.graphinfo, self.interaction):
                if module is not None:
                    params += list(module.parameters())
        return params

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the memory: SMU keys (+ construction statistics) and the MRaM table."""
        return {
            "smu_keys": self.smu.key_bytes(),
            "smu_statistics": self.smu.statistics_bytes(),
            "mram_values": self.mram.value_bytes(),
            "total": self.smu.key_bytes() + self.mram.value_bytes(),
        }


def save_mecoin(
    model: Mecoin,
    path: str | Path,
    encoder: EncoderConfig,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write a Mecoin model (frozen encoder, MeCo, SMU keys, MRaM values, head) as safetensors.

    The metadata holds what rebuilds it (the Mecoin and encoder configs as JSON, the input width, K_tot)
    plus ``metadata`` (JSON-encoded). Loading it never runs code (:func:`load_mecoin`).
    """
    from papers_shared.checkpoints import save_safetensors
    from papers_shared.config import config_to_dict

    meta = {
        "format": MEMORY_FORMAT,
        "mecoin": json.dumps(config_to_dict(model.config)),
        "encoder": json.dumps(config_to_dict(encoder)),
        "in_dim": str(model.encoder.in_dim),
        "num_classes": str(model.num_classes),
    }
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    return save_safetensors(dict(model.state_dict()), path, metadata=meta)


def load_mecoin(path: str | Path, device: str | torch.device = "cpu") -> tuple[Mecoin, dict]:
    """Read a file written by :func:`save_mecoin`: ``(model in eval mode, extra metadata)``.

    A damaged file, a file of another format, or one whose tensors do not fit its own configs raises
    :class:`papers_shared.errors.CheckpointError` naming the file.
    """
    from mecoin.encoders import build_encoder
    from papers_shared.checkpoints import load_safetensors
    from papers_shared.config import from_dict
    from papers_shared.errors import CheckpointError, ConfigError

    tensors, meta = load_safetensors(path, device=str(device))
    if meta.get("format") != MEMORY_FORMAT:
        raise CheckpointError(
            f"{path} is not a Mecoin memory (format {meta.get('format')!r}, expected {MEMORY_FORMAT!r}); "
            "give a .safetensors file written by `mecoin run`"
        )
    try:
        cfg = from_dict(MecoinConfig, json.loads(meta["mecoin"]))
        enc_cfg = from_dict(EncoderConfig, json.loads(meta["encoder"]))
        encoder = build_encoder(enc_cfg, int(meta["in_dim"]))
        model = Mecoin(encoder, cfg, num_classes=int(meta["num_classes"]))
        model.load_state_dict(tensors)
        extra = {
            k: json.loads(v) for k, v in meta.items() if k not in ("format", "mecoin", "encoder", "in_dim")
        }
    except (KeyError, ValueError, RuntimeError, ConfigError) as exc:
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"{path} is not a usable Mecoin memory ({msg})") from None
    return model.to(device).eval(), extra
