"""Complementary Memory Module (paper: CMM, short-term regions restructured into a long-term region; form
ours): STM slots and the LTM, decoupled from inference.

A :class:`Region` is one memory region: a peft adapter of the small model ("parameter memory") plus a
:class:`~sr_cis.prototypes.PrototypeHead` ("representation memory"). The STM holds one region per
task; the LTM is the merged region left by restructuring. Descriptions live in a
:class:`~sr_cis.text_memory.TextMemory` that restructuring keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sr_cis.prototypes import PrototypeHead
from sr_cis.text_memory import TextMemory

__all__ = ["ComplementaryMemory", "Region"]


@dataclass
class Region:
    """One memory region: adapter name, kind (``"stm"``/``"ltm"``), head, and the tasks it covers."""

    adapter: str
    kind: str
    head: PrototypeHead
    tasks: list[int] = field(default_factory=list)
    #: class means of the frozen backbone's features, rows in ``head.classes`` order (``frozen_prototype``
    #: routing compares regions in this one shared feature space)
    frozen_prototypes: torch.Tensor | None = None

    @property
    def classes(self) -> list[int]:
        return list(self.head.classes)

    def head_bytes(self) -> int:
        n = sum(p.numel() * p.element_size() for p in self.head.parameters())
        if self.frozen_prototypes is not None:
            n += self.frozen_prototypes.numel() * self.frozen_prototypes.element_size()
        return n


class ComplementaryMemory:
    """Ordered regions (LTM first, then STM slots in task order) + text memory."""

    def __init__(self) -> None:
        self.ltm: Region | None = None
        self.stm: dict[int, Region] = {}
        self.text = TextMemory()
        self.ltm_generation = 0

    @property
    def regions(self) -> list[Region]:
        return ([self.ltm] if self.ltm is not None else []) + [self.stm[t] for t in sorted(self.stm)]

    def add_stm(self, task_id: int, region: Region) -> None:
        if task_id in self.stm:
            raise ValueError(f"STM slot {task_id} already exists")
        seen = set(self.seen_classes)
        dup = seen & set(region.classes)
        if dup:
            raise ValueError(
                f"classes {sorted(dup)} are already memorised (class-incremental tasks are disjoint)"
            )
        self.stm[task_id] = region

    @property
    def seen_classes(self) -> list[int]:
        return [c for r in self.regions for c in r.classes]

    def owner(self) -> dict[int, Region]:
        """``class id -> region that currently owns it``."""
        return {c: r for r in self.regions for c in r.classes}

    def storage_report(self, small_model, image_stats_bytes: int = 0) -> dict:
        """Bytes of parameter memory (LoRA tensors), representation memory (heads), text memory and, for
        the pixel-statistics replay variant, the image statistics kept beside the text."""
        lora = {r.adapter: small_model.adapter_bytes(r.adapter) for r in self.regions}
        heads = {r.adapter: r.head_bytes() for r in self.regions}
        text = self.text.nbytes()
        return {
            "regions": len(self.regions),
            "lora_bytes": int(sum(lora.values())),
            "head_bytes": int(sum(heads.values())),
            "text_bytes": int(text),
            "image_stats_bytes": int(image_stats_bytes),
            "total_bytes": int(sum(lora.values()) + sum(heads.values()) + text + image_stats_bytes),
            "per_region": {k: {"lora": lora[k], "head": heads[k]} for k in lora},
        }
