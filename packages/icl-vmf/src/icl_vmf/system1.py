"""System1: frozen ViT -> CKT-MHA -> query embedding, matched against the value memories (official
``backbone/cvt_online.py:Brain_Net_Vit``, commit 8c8ad10)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from icl_vmf.ckt_mha import CKTMHA
from icl_vmf.encoders import ViTEncoder, build_vit
from icl_vmf.memory import VMFValueMemory

__all__ = ["System1", "build_system1"]

PHASES = ("both", "memory", "projection")


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")


class System1(nn.Module):
    """The fast system.

    * ``set2set_logits(x, y)``: training logits ``S [n, n]``, ``S_ij = z_i . m_{y_j}`` (``Brain_Net_Vit.forward``
      with labels).
    * ``scores(x)``: test logits ``[B, K]`` over the consolidated classes (cosines in [-1, 1]).

    ``phase`` controls which side carries gradients (``Onlinevt.observe`` steps two optimizers): ``"memory"`` computes the query
    embeddings under ``no_grad`` (the memory step only updates keys), ``"projection"`` detaches the keys,
    ``"both"`` keeps every gradient. The encoder is never trained.
    """

    def __init__(self, encoder: ViTEncoder, ckt: CKTMHA, memory: VMFValueMemory) -> None:
        super().__init__()
        if ckt.d_model != encoder.hidden_size:
            raise ValueError(f"CKT-MHA width {ckt.d_model} != ViT hidden size {encoder.hidden_size}")
        if (ckt.d_class, ckt.d_task) != (memory.d_class, memory.d_task):
            raise ValueError("CKT-MHA and memory disagree on (d_class, d_task)")
        self.encoder, self.ckt, self.memory = encoder, ckt, memory

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Token features ``H [B, L, D]`` of the frozen ViT."""
        return self.encoder(x)

    def embed(self, x: torch.Tensor | None = None, H: torch.Tensor | None = None) -> torch.Tensor:
        """Query embedding ``z [B, d_t + d_c]`` (unit norm) from images or precomputed tokens."""
        if H is None:
            if x is None:
                raise ValueError("embed needs images x or token features H")
            H = self.features(x)
        return self.ckt.embed(H)

    def set2set_logits(
        self,
        x: torch.Tensor | None,
        y: torch.Tensor,
        phase: str = "both",
        H: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``S = Z [m_{y_1}, ..., m_{y_n}]^T`` for a training batch (labels duplicated as given).

        With ``rows`` the images (or ``H``) are only those rows of the batch and ``S`` is that block
        ``[len(rows), n]`` (several processes split a batch by rows; ours)."""
        _check_phase(phase)
        with torch.no_grad() if phase == "memory" else contextlib.nullcontext():
            z = self.embed(x, H)
        return self.logits_from_embedding(z, y, phase, rows)

    def logits_from_embedding(
        self, z: torch.Tensor, y: torch.Tensor, phase: str = "both", rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``S = z [m_{y_1}, ..., m_{y_n}]^T`` from query embeddings ``z`` (all rows, or ``rows``)."""
        _check_phase(phase)
        expected = y.shape[0] if rows is None else len(rows)
        if z.shape[0] != expected:
            raise ValueError(f"{z.shape[0]} images for {expected} rows of a batch of {y.shape[0]} labels")
        keys = self.memory.keys_for(y, detach=phase == "projection")
        return z @ keys.t()

    @torch.no_grad()
    def scores(self, x: torch.Tensor, include_current: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s [B, K], class_ids [K])``: cosines against the consolidated keys of the seen classes."""
        keys, ids = self.memory.keys_seen(include_current)
        if keys.shape[0] == 0:
            raise RuntimeError("no consolidated class yet: train and consolidate a task before scoring")
        return self.embed(x) @ keys.t(), ids

    def projection_parameters(self) -> list[nn.Parameter]:
        """Parameters of the projection optimizer: the class projector and all of CKT-MHA."""
        return [p for p in self.ckt.parameters() if p.requires_grad]


def build_system1(
    cfg,
    num_classes: int,
    num_tasks: int,
    encoder: ViTEncoder | None = None,
    seed: int | None = None,
) -> System1:
    """System1 from a :class:`~icl_vmf.config.System1Config` (the encoder is built unless given)."""
    if num_classes % num_tasks:
        raise ValueError(f"{num_classes} classes cannot form {num_tasks} equal tasks")
    if encoder is None:
        encoder = build_vit(
            cfg.vit if cfg.vit_config is None else None,
            config=cfg.vit_config,
            normalize_mean=cfg.normalize_mean,
            normalize_std=cfg.normalize_std,
            image_size=cfg.image_size,
            seed=seed,
        )
    d_task = cfg.memory_dim - cfg.hidden_dim
    ckt = CKTMHA(
        encoder.hidden_size,
        cfg.hidden_dim,
        d_task,
        cfg.num_heads,
        cfg.proj_mult,
        cfg.use_ckt_mha,
        fused_inference=cfg.fused_inference,
    )
    memory = VMFValueMemory(
        num_classes, num_tasks, num_classes // num_tasks, cfg.hidden_dim, d_task, cfg.init_std
    )
    return System1(encoder, ckt, memory)
