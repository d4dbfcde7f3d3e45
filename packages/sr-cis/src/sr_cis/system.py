"""SR-CIS: the whole system (paper: CIM + CA-OAD, CMM and SRM; how they are put together is ours).

* :meth:`SRCIS.train_task` - STM slot for task t (task LoRA + prototype head, :func:`sr_cis.trainer.train_stm`)
  and the text memory of its classes.
* :meth:`SRCIS.restructure` - STM -> LTM: replay scenes from the text memory, merge the LoRAs exactly,
  concatenate the heads, fine-tune with distillation from each class's previous region.
* :meth:`SRCIS.predict` - fast path (:mod:`sr_cis.fast_path`) + CA-OAD (:mod:`sr_cis.ca_oad`) + slow path.
* :meth:`SRCIS.evaluate` - accuracy (fast / fast+slow), region accuracy, routing share, the slow path's
  gain on routed samples, storage; sharded over processes under ``torchrun``.
* :meth:`SRCIS.save` / :meth:`SRCIS.load` - the memory as safetensors (tensors) + JSON metadata.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from papers_shared.distributed import gather_objects, gather_rows, shard, world_size
from papers_shared.errors import CheckpointError
from sr_cis.ca_oad import OnlineConfidenceAnomalyDetector, RandomRouter
from sr_cis.config import SRCISConfig
from sr_cis.data import class_images, dataset_labels, in_memory
from sr_cis.fast_path import FastInference, FastOutput, route
from sr_cis.memory import ComplementaryMemory, Region
from sr_cis.prototypes import PrototypeHead, concat_heads
from sr_cis.scenario import GaussianPixelGenerator, replay_seed
from sr_cis.slow_path import SlowPath
from sr_cis.text_memory import CLASS_NAME_TEMPLATE, TextMemory
from sr_cis.trainer import HeadOnFeatures, batches, fit, train_stm

__all__ = ["SRCIS", "STATE_FORMAT", "RestructureReport", "restructure_due", "summarize"]

STATE_FORMAT = "sr-cis/2"


def restructure_due(period: int | str | None, t: int, num_tasks: int | None) -> bool:
    """Restructure after (0-based) task ``t``: every ``R`` tasks, only at the end, or never (ours)."""
    if period is None:
        return False
    if period == "end":
        if num_tasks is None:
            raise ValueError("period='end' needs the number of tasks")
        return t == num_tasks - 1
    if not isinstance(period, int) or period < 1:
        raise ValueError(f"restructure period must be a positive int, 'end' or None, got {period!r}")
    return (t + 1) % period == 0


@dataclass
class RestructureReport:
    merged: list[str]
    new_adapter: str
    replay_samples: int
    classes: list[int]
    prompts_per_class: dict[int, int]
    losses: list[float] = field(default_factory=list)
    skipped: bool = False


def _loader(ds: Dataset, batch_size: int, workers: int = 0, indices: list[int] | None = None):
    """In-order batches of ``ds`` (or of ``indices`` of it); in-memory tensors are indexed directly."""
    if indices is not None:
        ds = Subset(ds, indices)
    return batches(in_memory(ds), batch_size, None, workers)


class SRCIS:
    """Self-Reflective Complementary Incremental System.

    Args:
        small_model: :class:`~sr_cis.small_model.SmallModel` (frozen ViT + peft adapters).
        large_model: any :class:`papers_shared.mllm.MultimodalLM` or ``None`` (fast path only).
        generator: a scenario generator (``generate(prompts, seeds) -> [N, C, H, W]``) or ``None`` (no
            restructuring). An unfrozen :class:`~sr_cis.scenario.GaussianPixelGenerator` is fitted on each
            task's images (the pixel-statistics variant); a frozen one only reads the stored text.
        class_names: ``class id -> name`` for every class that will appear.
        seed: seeds every generator the system creates (sample order, replay images, random routing).
    """

    def __init__(
        self,
        small_model,
        large_model=None,
        generator=None,
        cfg: SRCISConfig | None = None,
        class_names: Mapping[int, str] | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = cfg or SRCISConfig()
        self.device = torch.device(device)
        self.model = small_model.to(self.device)
        self.large_model = large_model
        self.generator = generator
        self.seed = int(seed)
        self.class_names = {int(k): str(v) for k, v in (class_names or {}).items()}
        self.memory = ComplementaryMemory()
        self.tasks_seen = 0
        self.task_reports: list[dict] = []
        self.detector = self._build_detector()
        self._slow: SlowPath | None = None

    def _build_detector(self):
        c = self.cfg.caoad
        if c.random_fraction is not None:
            return RandomRouter(c.random_fraction, self.seed)
        return OnlineConfidenceAnomalyDetector(
            c.z_threshold, c.warmup, c.scope, c.score, c.rule, c.route_share
        )

    @contextlib.contextmanager
    def override(self, **sections: Any) -> Iterator[SRCIS]:
        """Evaluate with other inference settings, e.g. ``override(fast=FastPathConfig(routing="max_conf"))``;
        the trained memory is shared, the previous config is restored on exit."""
        saved, saved_det = self.cfg, self.detector
        cfg = copy.copy(self.cfg)
        for k, v in sections.items():
            if not hasattr(cfg, k):
                raise KeyError(f"SRCISConfig has no section {k!r}")
            setattr(cfg, k, v)
        self.cfg = cfg
        self.detector = self._build_detector()
        try:
            yield self
        finally:
            self.cfg, self.detector = saved, saved_det

    # ------------------------------------------------------------------ helpers
    @property
    def slow(self) -> SlowPath | None:
        if self.large_model is None:
            return None
        if self._slow is None or self._slow.names != self.class_names:
            s = self.cfg.slow
            self._slow = SlowPath(
                self.large_model, self.class_names, s.answer_mode, s.max_new_tokens, s.match_mode
            )
        return self._slow

    @property
    def describe_mode(self) -> str:
        """``cfg.text.describe_mode``, or ``class_name_only`` when the large model cannot generate text."""
        if self.large_model is not None and not hasattr(self.large_model, "generate"):
            return "class_name_only"
        return self.cfg.text.describe_mode

    @property
    def stores_image_stats(self) -> bool:
        """True for the pixel-statistics replay variant (statistics of task images kept in memory)."""
        return isinstance(self.generator, GaussianPixelGenerator) and not self.generator.frozen

    def fast(self) -> FastInference:
        f = self.cfg.fast
        return FastInference(self.model, self.memory, f.routing, f.top_k, self.cfg.caoad.score)

    def _name(self, c: int) -> str:
        if c not in self.class_names:
            raise KeyError(f"no class name for class {c}; pass class_names")
        return self.class_names[c]

    def _feats(self, x: torch.Tensor, adapter: str | None) -> torch.Tensor:
        return self.model.features(x.to(self.device), adapter)

    def _head(self, classes: list[int], protos: torch.Tensor) -> PrototypeHead:
        s = self.cfg.stm
        return PrototypeHead.from_prototypes(protos, classes, s.prototype_norm, s.prototype_tau).to(
            self.device
        )

    @torch.no_grad()
    def _prototypes(self, ds: Dataset, classes: list[int], adapter: str | None) -> torch.Tensor:
        """Class means of ``adapter``'s features; each process reads a shard, the sums are gathered."""
        dim = self.model.dim
        sums = torch.zeros(len(classes), dim, dtype=torch.float64)
        counts = torch.zeros(len(classes), dtype=torch.float64)
        col = {c: i for i, c in enumerate(classes)}
        self.model.eval()
        mine = shard(list(range(len(ds))))
        for xb, yb in _loader(ds, self.cfg.fast.batch_size, self.cfg.num_workers, mine):
            h = self._feats(xb, adapter).double().cpu()
            rows = torch.tensor([col.get(int(c), -1) for c in yb])
            keep = rows >= 0
            sums.index_add_(0, rows[keep], h[keep])
            counts.index_add_(0, rows[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
        if world_size() > 1:
            parts = gather_objects((sums, counts))
            sums = sum(p[0] for p in parts)
            counts = sum(p[1] for p in parts)
        missing = [c for c in classes if counts[col[c]] == 0]
        if missing:
            raise ValueError(f"classes {missing} have no training samples")
        return (sums / counts[:, None]).float()

    # ------------------------------------------------------------------ training
    def train_task(
        self, train: Dataset, task_id: int | None = None, class_names: Mapping[int, str] | None = None
    ) -> Region:
        """Fit STM slot ``task_id`` on ``train`` (images in [0, 1], global labels) and write its text memory."""
        if class_names:
            self.class_names.update({int(k): str(v) for k, v in class_names.items()})
        task_id = self.tasks_seen if task_id is None else int(task_id)
        labels = dataset_labels(train)
        classes = sorted(torch.unique(labels).tolist())
        if not classes:
            raise ValueError("the task has no training samples")
        for c in classes:
            self._name(c)
        overlap = set(classes) & set(self.memory.seen_classes)
        if overlap:
            raise ValueError(f"classes {sorted(overlap)} were already learned (tasks must be disjoint)")
        s = self.cfg.stm
        name = f"stm_{task_id}"
        self.model.add_task_adapter(name, seed=self.seed * 1_000_003 + 300_000 + task_id)
        before = self._prototypes(train, classes, name)  # B = 0: the frozen backbone's class means
        head = self._head(classes, before)
        local = torch.full((max(classes) + 1,), -1, dtype=torch.long)
        local[torch.tensor(classes)] = torch.arange(len(classes))
        losses = train_stm(
            self.model,
            head,
            name,
            train,
            local,
            s,
            seed=self.seed * 1_000_003 + task_id,
            device=self.device,
            progress=self.cfg.progress,
            num_workers=self.cfg.num_workers,
        )
        after = self._prototypes(train, classes, name) if losses and s.train_lora else before
        if s.refresh_prototypes:
            head.set_prototypes(after.to(self.device))
        self.model.freeze_all()
        head.requires_grad_(False)
        region = Region(name, "stm", head, [task_id], frozen_prototypes=before.detach().cpu())
        self.memory.add_stm(task_id, region)
        self.tasks_seen = max(self.tasks_seen, task_id + 1)
        shift = ((after - before).norm(dim=1) / before.norm(dim=1).clamp_min(1e-12)).mean()
        self.task_reports.append(
            {
                "task": task_id,
                "losses": losses,
                "lora_rel_delta": self.model.relative_delta(name),
                "prototype_shift": float(shift),
            }
        )
        self._write_text(train, labels, classes)
        return region

    def _write_text(self, train: Dataset, labels: torch.Tensor, classes: list[int]) -> None:
        t = self.cfg.text
        gen = torch.Generator().manual_seed(self.seed)
        for c in classes:
            name = self._name(c)
            self.memory.text.set_name(c, name)
            if self.stores_image_stats:
                self.generator.fit(name, class_images(train, labels, c, None, gen))
            if self.describe_mode == "class_name_only":
                self.memory.text.add(c, CLASS_NAME_TEMPLATE.format(name=name))
                continue
            if self.large_model is None:
                raise ValueError(
                    "describe_mode='mllm' needs a large model; pass one or set text.describe_mode=class_name_only"
                )
            imgs = class_images(train, labels, c, t.n_desc, gen)
            for d in self.slow.describe(imgs, c, t.max_new_tokens):
                self.memory.text.add(c, d)

    # ------------------------------------------------------------------ restructuring
    def replay_prompts(self) -> tuple[list[str], list[int], list[int]]:
        """Prompts, seeds and labels of the scenario replay of every memorised class, built from the text
        memory alone: ``n_desc`` prompts per class ("{name}, {description}" for large-model descriptions,
        the stored class-name prompt otherwise)."""
        n = self.cfg.text.n_desc
        prompts, seeds, labels = [], [], []
        for c in self.memory.seen_classes:
            texts = self.memory.text.for_class(c)
            if not texts:
                raise ValueError(f"class {c} has no stored text to replay")
            if self.describe_mode == "class_name_only":
                ps = [texts[i % len(texts)] for i in range(n)]
            else:
                ps = [f"{self._name(c)}, {d}" for d in texts[:n]]
            prompts += ps
            seeds += [replay_seed(c, i, self.seed) for i in range(len(ps))]
            labels += [c] * len(ps)
        return prompts, seeds, labels

    def _generate(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Replay images; the prompts are shared over the processes and the images gathered."""
        idx = list(range(len(prompts)))
        mine = shard(idx)
        part = self.generator.generate([prompts[i] for i in mine], [seeds[i] for i in mine]) if mine else []
        rows = gather_rows(list(part), idx) if world_size() > 1 else list(part)
        return torch.stack(rows).float()

    def restructure(self) -> RestructureReport:
        """STM -> LTM: replay, exact merge, head concat, distillation fine-tune, free the STM (ours)."""
        if self.generator is None:
            raise ValueError("restructuring needs a scenario generator (generator.kind=gaussian or sdxl)")
        mem = self.memory
        if not mem.stm:
            return RestructureReport(
                [], mem.ltm.adapter if mem.ltm else "", 0, mem.seen_classes, {}, skipped=True
            )
        rc = self.cfg.restructure
        prompts, seeds, labels = self.replay_prompts()
        x_s = self._generate(prompts, seeds)
        y_s = torch.tensor(labels)
        per_class = {c: labels.count(c) for c in sorted(set(labels))}
        owner = mem.owner()
        regions = mem.regions
        # teacher logits: the owner region on each replayed scene, computed once
        teach = torch.zeros(len(labels), max(len(r.classes) for r in regions))
        self.model.eval()
        bs = self.cfg.fast.batch_size
        with torch.no_grad():
            for r in regions:
                idx = [i for i, c in enumerate(labels) if owner[c] is r]
                for s in range(0, len(idx), bs):
                    ii = idx[s : s + bs]
                    teach[ii, : len(r.classes)] = r.head(self._feats(x_s[ii], r.adapter)).float().cpu()
        n_total = len(mem.seen_classes)
        names = [r.adapter for r in regions]
        weights = [len(r.classes) / n_total for r in regions]
        mem.ltm_generation += 1
        new = f"ltm_{mem.ltm_generation}"
        svd_rank = rc.svd_rank or 2 * self.model.lora.r
        self.model.merge_adapters(names, weights, new, rc.merge, svd_rank if rc.merge == "svd" else None)
        head = concat_heads([r.head for r in regions]).to(self.device)
        col = {c: i for i, c in enumerate(head.classes)}
        target = torch.tensor([col[c] for c in labels])
        region_of = torch.tensor([regions.index(owner[c]) for c in labels])
        owner_cols = [torch.tensor([col[c] for c in r.classes]) for r in regions]
        T, beta = rc.kd_temperature, rc.kd_beta

        def loss_fn(model, batch):
            (ii,) = batch
            z = model(x_s[ii].to(self.device))
            loss = F.cross_entropy(z, target[ii].to(self.device))
            kd = z.new_zeros(())
            for ri, cols in enumerate(owner_cols):
                rows = torch.nonzero(region_of[ii] == ri).flatten()
                if rows.numel() == 0:
                    continue
                zs = z[rows.to(self.device)][:, cols.to(self.device)]
                zt = teach[ii[rows], : len(cols)].to(self.device)
                kd = kd + F.kl_div(
                    F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), reduction="sum", log_target=True
                )
            return loss + beta * T * T * kd / len(ii)

        self.model.freeze_all()
        if rc.train_lora:
            self.model.set_adapter(new)
        head.requires_grad_(rc.train_head)
        losses = fit(
            HeadOnFeatures(self.model, head, new),
            TensorDataset(torch.arange(len(labels))),
            loss_fn,
            epochs=rc.epochs,
            batch_size=rc.batch_size,
            optimizer=lambda ps: torch.optim.AdamW(ps, lr=rc.lr, weight_decay=rc.weight_decay),
            seed=self.seed * 1_000_003 + 500_000 + mem.ltm_generation,
            progress=self.cfg.progress,
            desc="restructure",
        )
        if rc.refresh_ltm_prototypes:
            head.set_prototypes(self._prototypes(TensorDataset(x_s, y_s), head.classes, new).to(self.device))
        self.model.freeze_all()
        head.requires_grad_(False)
        tasks = sorted(t for r in regions for t in r.tasks)
        for n in names:
            self.model.delete_adapter(n)
        frozen = None
        if all(r.frozen_prototypes is not None for r in regions):
            rows = {c: r.frozen_prototypes[i] for r in regions for i, c in enumerate(r.classes)}
            frozen = torch.stack([rows[c] for c in head.classes])
        mem.ltm = Region(new, "ltm", head, tasks, frozen_prototypes=frozen)
        mem.stm = {}
        return RestructureReport(names, new, len(labels), list(head.classes), per_class, losses)

    def restructure_due(self, t: int, num_tasks: int | None = None) -> bool:
        return restructure_due(self.cfg.restructure.period, t, num_tasks)

    def after_task(self, t: int, num_tasks: int | None = None) -> RestructureReport | None:
        """Restructure when the period says so."""
        return self.restructure() if self.restructure_due(t, num_tasks) else None

    # ------------------------------------------------------------------ persistence
    def state_dict(self, include_backbone: bool = False) -> dict[str, Any]:
        """The memory as tensors, numbers, strings, lists and dicts (loadable with ``weights_only=True``)."""

        def region(r: Region) -> dict:
            h = r.head
            return {
                "adapter": r.adapter,
                "kind": r.kind,
                "tasks": list(r.tasks),
                "classes": list(h.classes),
                "norm": h.norm,
                "tau": h.tau,
                "weight": h.weight.detach().cpu().clone(),
                "bias": h.bias.detach().cpu().clone(),
                **({"frozen": r.frozen_prototypes.clone()} if r.frozen_prototypes is not None else {}),
            }

        mem = self.memory
        out: dict[str, Any] = {
            "format": STATE_FORMAT,
            "adapters": {
                n: {"r": r, "alpha": a, "state": self.model.adapter_state(n)}
                for n, (r, a) in self.model.adapter_ranks.items()
            },
            "ltm": region(mem.ltm) if mem.ltm is not None else None,
            "stm": {str(t): region(r) for t, r in mem.stm.items()},
            "text": mem.text.to_dict(),
            "ltm_generation": mem.ltm_generation,
            "tasks_seen": self.tasks_seen,
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "task_reports": [dict(r) for r in self.task_reports],
        }
        if self.stores_image_stats:
            out["image_stats"] = {
                k: {"mean": m, "factor": f, "shape": list(sh)}
                for k, (m, f, sh) in self.generator.stats.items()
            }
        if include_backbone:
            sd = self.model.backbone.state_dict()
            out["backbone"] = {
                k.replace(".base_layer", ""): v.detach().cpu().clone()
                for k, v in sd.items()
                if "lora_" not in k
            }
        return out

    def load_state_dict(self, state: Mapping[str, Any], source: str = "state") -> None:
        """Restore a :meth:`state_dict` into a system whose small model has no adapters yet."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{source} is not an SR-CIS memory (format {STATE_FORMAT!r} expected)")
        if self.model.adapters:
            raise ValueError(
                f"load into a fresh small model; this one already has adapters {self.model.adapters}"
            )
        try:
            if "backbone" in state:
                self.model.backbone.load_state_dict(state["backbone"], strict=True)
            for n, a in state["adapters"].items():
                self.model.add_task_adapter(n, r=int(a["r"]), alpha=float(a["alpha"]))
                self.model.load_adapter_state(n, a["state"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{source} does not fit this small model: {str(exc).splitlines()[0]}"
            ) from None
        self.model.freeze_all()

        def region(d: Mapping) -> Region:
            head = PrototypeHead(d["classes"], d["weight"].shape[1], d["norm"], d["tau"])
            with torch.no_grad():
                head.weight.copy_(d["weight"])
                head.bias.copy_(d["bias"])
            head.requires_grad_(False)
            return Region(d["adapter"], d["kind"], head.to(self.device), list(d["tasks"]), d.get("frozen"))

        mem = ComplementaryMemory()
        mem.ltm = region(state["ltm"]) if state["ltm"] is not None else None
        mem.stm = {int(t): region(r) for t, r in state["stm"].items()}
        mem.text = TextMemory.from_dict(state["text"], where=source)
        mem.ltm_generation = int(state["ltm_generation"])
        self.memory = mem
        self.tasks_seen = int(state["tasks_seen"])
        self.task_reports = [dict(r) for r in state.get("task_reports", [])]
        self.class_names.update({int(k): v for k, v in state["class_names"].items()})
        if "image_stats" in state and isinstance(self.generator, GaussianPixelGenerator):
            self.generator.stats = {
                k: (v["mean"], v["factor"], tuple(v["shape"])) for k, v in state["image_stats"].items()
            }

    def save(self, path: str | Path, include_backbone: bool = False) -> Path:
        """Write the memory as safetensors: every tensor under a flat key, the rest as JSON metadata."""
        from papers_shared.checkpoints import save_safetensors

        tensors: dict[str, torch.Tensor] = {}

        def strip(obj: Any, key: str) -> Any:
            if isinstance(obj, torch.Tensor):
                tensors[key] = obj.detach().cpu().contiguous()
                return {"__tensor__": key}
            if isinstance(obj, Mapping):
                return {str(k): strip(v, f"{key}/{k}") for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [strip(v, f"{key}/{i}") for i, v in enumerate(obj)]
            return obj

        meta = strip(self.state_dict(include_backbone), "m")
        return save_safetensors(tensors, path, metadata={"format": STATE_FORMAT, "state": json.dumps(meta)})

    def load(self, path: str | Path) -> None:
        """Read a memory written by :meth:`save` (safetensors) or a runner checkpoint (``.pt``, loaded with
        ``weights_only=True``). Nothing in either file can run code."""
        from papers_shared.checkpoints import load_checkpoint, load_safetensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SR-CIS memory file not found: {path}")
        if path.suffix == ".safetensors":
            tensors, meta = load_safetensors(path)
            try:
                skeleton = json.loads(meta["state"])
            except (KeyError, json.JSONDecodeError):
                raise CheckpointError(f"{path} has no SR-CIS metadata; write it with SRCIS.save") from None

            def fill(obj: Any) -> Any:
                if isinstance(obj, dict) and set(obj) == {"__tensor__"}:
                    if obj["__tensor__"] not in tensors:
                        raise CheckpointError(f"{path} lacks tensor {obj['__tensor__']!r}")
                    return tensors[obj["__tensor__"]]
                if isinstance(obj, dict):
                    return {k: fill(v) for k, v in obj.items()}
                if isinstance(obj, list):
                    return [fill(v) for v in obj]
                return obj

            state = fill(skeleton)
        else:
            state = load_checkpoint(path)
            if isinstance(state, dict) and "system" in state:  # a runner checkpoint
                state = state["system"]
        self.load_state_dict(state, source=str(path))

    # ------------------------------------------------------------------ inference
    def reset_stream(self) -> None:
        """Start a new test stream (CA-OAD statistics are reset)."""
        self.detector.reset()

    def _decide(
        self, x: torch.Tensor, topk: torch.Tensor, fast: torch.Tensor
    ) -> tuple[torch.Tensor, list[str]]:
        out, answers = fast.clone(), []
        bs = self.cfg.slow.batch_size
        for s in range(0, x.shape[0], bs):
            new, ans = self.slow.decide(x[s : s + bs].cpu(), topk[s : s + bs], fast[s : s + bs])
            out[s : s + bs] = new
            answers += ans
        return out, answers

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Final predictions ``[B]`` and ``info`` (fast prediction, confidence, flags, region, top-k)."""
        self.model.eval()
        out: FastOutput = self.fast()(x.to(self.device))
        pred = out.pred.clone()
        flags = torch.zeros_like(pred, dtype=torch.bool)
        answers: list[str] = []
        c = self.cfg
        if c.caoad.enabled:
            flags = self.detector.update_and_flag(out.score.cpu())
            if c.slow.enabled and self.slow is not None and flags.any():
                idx = torch.nonzero(flags).flatten()
                pred[idx], answers = self._decide(x[idx].cpu(), out.topk[idx], out.pred[idx])
        info = {
            "fast_pred": out.pred,
            "conf": out.conf,
            "score": out.score,
            "flags": flags,
            "region": out.region,
            "topk": out.topk,
            "passes": out.passes,
            "answers": answers,
        }
        return pred, info

    @torch.no_grad()
    def evaluate(
        self, test: Dataset, task_of_class: Mapping[int, int] | None = None, max_samples=None
    ) -> dict:
        """Fast and final accuracy, per-task accuracies, region accuracy (the answering region owns the true
        class), accuracy within the true class's region (region-incremental accuracy), routing share and the
        slow path's gain on routed samples, on the stream ``test`` (in order).

        Under ``torchrun`` the fast path's batches are shared over the processes, CA-OAD then reads the
        gathered stream in order (the same on every process), and the routed samples are shared again for
        the slow path: the result equals one process's.
        """
        self.model.eval()
        self.reset_stream()
        n = len(test) if max_samples is None else min(len(test), int(max_samples))
        if n == 0:
            raise ValueError("empty test set")
        bs = self.cfg.fast.batch_size
        starts = list(range(0, n, bs))
        mine = shard(starts)
        idx = [i for s in mine for i in range(s, min(s + bs, n))]
        fast = self.fast()
        regions = fast.regions()
        region_of_class = {c: i for i, r in enumerate(regions) for c in r.classes}
        rows = []
        passes = len(regions) + (fast.routing == "frozen_prototype")
        for xb, yb in _loader(test, bs, self.cfg.num_workers, idx):
            ro = fast.readout(xb.to(self.device))
            out = route(ro, fast.routing, fast.top_k, fast.score)
            true_region = torch.tensor([region_of_class.get(int(c), -1) for c in yb])
            in_region = torch.full_like(out.pred, -1)  # the answer of the true class's own region
            for ri, (z, cls) in enumerate(zip(ro.logits, ro.classes)):
                m = true_region == ri
                if m.any():
                    in_region[m] = cls[z[m].argmax(1)]
            rows.append((yb.long(), out.pred, out.score, out.topk, out.region == true_region, in_region))
        rows = gather_rows(rows, starts)
        y, fast_pred, score, topk, region_ok, in_region = (torch.cat(parts) for parts in zip(*rows))
        flags = torch.zeros(n, dtype=torch.bool)
        if self.cfg.caoad.enabled:
            flags = torch.cat([self.detector.update_and_flag(r[2].cpu()) for r in rows])
        final = fast_pred.clone()
        if self.cfg.caoad.enabled and self.cfg.slow.enabled and self.slow is not None and flags.any():
            routed = torch.nonzero(flags).flatten().tolist()
            my_routed = shard(routed)
            decided: list[int] = []
            if my_routed:
                xs = torch.cat([xb for xb, _ in _loader(test, bs, self.cfg.num_workers, my_routed)])
                new, _ = self._decide(xs, topk[my_routed], fast_pred[my_routed])
                decided = new.tolist()
            final[routed] = torch.tensor(gather_rows(decided, routed), dtype=torch.long)
        return summarize(y, fast_pred, final, flags, task_of_class) | {
            "region_acc": float(region_ok.float().mean()),
            "acc_in_true_region": float((in_region == y).float().mean()),
            "passes": passes,
            "storage": self.storage_report(),
        }

    def storage_report(self) -> dict:
        stats = self.generator.nbytes() if self.stores_image_stats else 0
        return self.memory.storage_report(self.model, image_stats_bytes=stats)


def summarize(y, fast, final, flags, task_of_class=None) -> dict:
    """Accuracy / routing statistics of one evaluation; rates are fractions of the routed samples."""
    y, fast, final, flags = y.cpu(), fast.cpu(), final.cpu(), flags.cpu().bool()
    n = y.numel()
    fr, fw = fast == y, fast != y
    n_routed = max(int(flags.sum()), 1)
    out = {
        "n": n,
        "acc_fast": float(fr.float().mean()),
        "acc": float((final == y).float().mean()),
        "route_frac": float(flags.float().mean()),
        "fix_rate": float((flags & fw & (final == y)).float().sum() / n_routed),
        "harm_rate": float((flags & fr & (final != y)).float().sum() / n_routed),
        "acc_fast_flagged": float(fr[flags].float().mean()) if flags.any() else math.nan,
        "acc_final_flagged": float((final == y)[flags].float().mean()) if flags.any() else math.nan,
        "acc_fast_unflagged": float(fr[~flags].float().mean()) if (~flags).any() else math.nan,
    }
    out["gain_flagged"] = out["acc_final_flagged"] - out["acc_fast_flagged"] if flags.any() else math.nan
    if task_of_class is not None:
        tasks = torch.tensor([task_of_class[int(c)] for c in y])
        out["per_task"] = {
            int(t): float((final[tasks == t] == y[tasks == t]).float().mean())
            for t in sorted(set(tasks.tolist()))
        }
        out["per_task_fast"] = {
            int(t): float((fast[tasks == t] == y[tasks == t]).float().mean())
            for t in sorted(set(tasks.tolist()))
        }
    return out
