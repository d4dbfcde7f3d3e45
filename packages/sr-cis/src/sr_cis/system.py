"""SR-CIS: the whole system (spec §3.0, §3.9).

* :meth:`SRCIS.train_task` - STM slot for task t (spec §3.2) + descriptions of its classes (spec §3.3).
* :meth:`SRCIS.restructure` - STM -> LTM memory restructuring with scenario replay (spec §3.4-3.5).
* :meth:`SRCIS.predict` - fast path (spec §3.6) + CA-OAD (spec §3.7) + slow path (spec §3.8).
* :meth:`SRCIS.evaluate` - accuracy (fast / fast+slow), routing fraction, MLLM fix/harm rates, storage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from sr_cis.ca_oad import OnlineConfidenceAnomalyDetector, RandomRouter
from sr_cis.config import SRCISConfig
from sr_cis.data import class_images, dataset_labels
from sr_cis.fast_path import FastInference, FastOutput
from sr_cis.memory import ComplementaryMemory, Region
from sr_cis.prototypes import PrototypeHead, concat_heads
from sr_cis.scenario import GaussianPixelGenerator, replay_seed
from sr_cis.slow_path import SlowPath
from sr_cis.text_memory import CLASS_NAME_TEMPLATE, TextMemory

__all__ = ["SRCIS", "RestructureReport", "restructure_due"]


def restructure_due(period: int | str | None, t: int, num_tasks: int | None) -> bool:
    """Restructure after (0-based) task ``t``: every ``R`` tasks, only at the end, or never (spec §3.5)."""
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


def _feature_loader(
    ds: Dataset, batch_size: int, shuffle: bool, gen: torch.Generator | None = None, workers: int = 0
):
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers)


class SRCIS:
    """Self-Reflective Complementary Incremental System.

    Args:
        small_model: :class:`~sr_cis.small_model.SmallModel` (frozen ViT + peft adapters).
        large_model: any :class:`papers_shared.mllm.MultimodalLM` or ``None`` (fast path only).
        generator: a scenario generator (``generate(prompts, seeds) -> [N, C, H, W]``); a
            :class:`~sr_cis.scenario.GaussianPixelGenerator` is fitted on task data automatically.
        class_names: ``class id -> name`` for every class that will appear.
    """

    def __init__(
        self,
        small_model,
        large_model=None,
        generator=None,
        cfg: SRCISConfig | None = None,
        class_names: Mapping[int, str] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg or SRCISConfig()
        self.device = torch.device(device)
        self.model = small_model.to(self.device)
        self.large_model = large_model
        self.generator = generator
        self.class_names = {int(k): str(v) for k, v in (class_names or {}).items()}
        self.memory = ComplementaryMemory()
        self.tasks_seen = 0
        c = self.cfg.caoad
        if c.random_fraction is not None:
            self.detector = RandomRouter(c.random_fraction, c.seed)
        else:
            self.detector = OnlineConfidenceAnomalyDetector(c.z_threshold, c.warmup, c.scope, c.score)
        self._slow: SlowPath | None = None

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

    def _prototypes(self, ds: Dataset, labels: torch.Tensor, classes: list[int], adapter: str | None):
        sums = {c: None for c in classes}
        counts = dict.fromkeys(classes, 0)
        self.model.eval()
        with torch.no_grad():
            for xb, yb in _feature_loader(ds, self.cfg.fast.batch_size, False, None, self.cfg.num_workers):
                h = self._feats(xb, adapter).cpu()
                for c in classes:
                    m = yb == c
                    if m.any():
                        s = h[m].sum(0)
                        sums[c] = s if sums[c] is None else sums[c] + s
                        counts[c] += int(m.sum())
        missing = [c for c in classes if counts[c] == 0]
        if missing:
            raise ValueError(f"classes {missing} have no training samples")
        return torch.stack([sums[c] / counts[c] for c in classes])

    # ------------------------------------------------------------------ training (spec §3.2-3.3)
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
        self.model.add_task_adapter(name)
        protos = self._prototypes(train, labels, classes, name)
        head = self._head(classes, protos)
        local = torch.full((max(classes) + 1,), -1, dtype=torch.long)
        local[torch.tensor(classes)] = torch.arange(len(classes))
        params = (self.model.trainable_parameters(name) if s.train_lora else []) + (
            list(head.parameters()) if s.train_head else []
        )
        if not s.train_lora:
            self.model.freeze_all()
        losses: list[float] = []
        if params and s.epochs > 0:
            opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
            miles = sorted({max(1, int(round(m * s.epochs))) for m in s.milestones})
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, miles, gamma=s.gamma)
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
            self.model.train()
            bar = tqdm(
                range(s.epochs), desc=f"STM task {task_id}", disable=not self.cfg.progress, leave=False
            )
            for _ in bar:
                tot, n = 0.0, 0
                for xb, yb in _feature_loader(train, s.batch_size, True, gen, self.cfg.num_workers):
                    z = head(self._feats(xb, name))
                    loss = F.cross_entropy(z, local[yb].to(self.device))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite STM loss at task {task_id}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * xb.shape[0]
                    n += xb.shape[0]
                sched.step()
                losses.append(tot / max(n, 1))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            self.model.eval()
        if s.refresh_prototypes:
            head.set_prototypes(self._prototypes(train, labels, classes, name).to(self.device))
        self.model.freeze_all()
        for p in head.parameters():
            p.requires_grad_(False)
        region = Region(name, "stm", head, [task_id])
        self.memory.add_stm(task_id, region)
        self.tasks_seen = max(self.tasks_seen, task_id + 1)
        self.last_losses = losses
        self._write_text(train, labels, classes)
        return region

    def _write_text(self, train: Dataset, labels: torch.Tensor, classes: list[int]) -> None:
        t = self.cfg.text
        gen = torch.Generator().manual_seed(t.seed)
        fit = isinstance(self.generator, GaussianPixelGenerator)
        for c in classes:
            name = self._name(c)
            self.memory.text.set_name(c, name)
            if fit:
                self.generator.fit(name, class_images(train, labels, c, None, gen))
            if self.describe_mode == "class_name_only":
                continue
            if self.large_model is None:
                raise ValueError(
                    "describe_mode='mllm' needs a large model; pass one or set text.describe_mode=class_name_only"
                )
            imgs = class_images(train, labels, c, t.n_desc, gen)
            for d in self.slow.describe(imgs, c, t.max_new_tokens):
                self.memory.text.add(c, d)

    # ------------------------------------------------------------------ restructuring (spec §3.4-3.5)
    def replay_prompts(self) -> tuple[list[str], list[int], list[int]]:
        """Prompts, seeds and labels of the scenario replay of every memorised class (spec §3.4)."""
        t = self.cfg.text
        base = self.cfg.generator.seed
        prompts, seeds, labels = [], [], []
        for c in self.memory.seen_classes:
            name = self._name(c)
            if self.describe_mode == "class_name_only":
                ps = [CLASS_NAME_TEMPLATE.format(name=name)] * t.n_desc
            else:
                ds = self.memory.text.for_class(c)[: t.n_desc]
                if not ds:
                    raise ValueError(f"class {c} has no stored description to replay")
                ps = [f"{name}, {d}" for d in ds]
            prompts += ps
            seeds += [replay_seed(c, i, base) for i in range(len(ps))]
            labels += [c] * len(ps)
        return prompts, seeds, labels

    def restructure(self) -> RestructureReport:
        """STM -> LTM: replay, exact merge, head concat, KD fine-tune, free the STM (spec §3.5)."""
        if self.generator is None:
            raise ValueError("restructuring needs a scenario generator (generator.kind=gaussian or sdxl)")
        mem = self.memory
        if not mem.stm:
            return RestructureReport(
                [], mem.ltm.adapter if mem.ltm else "", 0, mem.seen_classes, {}, skipped=True
            )
        rc = self.cfg.restructure
        prompts, seeds, labels = self.replay_prompts()
        x_s = self.generator.generate(prompts, seeds).float()
        y_s = torch.tensor(labels)
        per_class = {c: labels.count(c) for c in sorted(set(labels))}
        owner = mem.owner()
        regions = mem.regions
        # teacher logits (owner region on each replayed scene), computed once and cached
        teach: list[torch.Tensor | None] = [None] * len(labels)
        self.model.eval()
        with torch.no_grad():
            for r in regions:
                idx = [i for i, c in enumerate(labels) if owner[c] is r]
                for s in range(0, len(idx), self.cfg.fast.batch_size):
                    ii = idx[s : s + self.cfg.fast.batch_size]
                    z = r.head(self._feats(x_s[ii], r.adapter)).cpu()
                    for j, i in enumerate(ii):
                        teach[i] = z[j]
        # exact merge of the parameter memories
        n_total = len(mem.seen_classes)
        names = [r.adapter for r in regions]
        weights = [len(r.classes) / n_total for r in regions]
        mem.ltm_generation += 1
        new = f"ltm_{mem.ltm_generation}"
        svd_rank = rc.svd_rank or 2 * self.model.lora.r
        self.model.merge_adapters(names, weights, new, rc.merge, svd_rank if rc.merge == "svd" else None)
        head = concat_heads([r.head for r in regions]).to(self.device)
        col = {c: i for i, c in enumerate(head.classes)}
        owner_cols = {id(r): torch.tensor([col[c] for c in r.classes]) for r in regions}
        # fine-tune on the replayed scenes: CE + beta T^2 KL(teacher || student restricted to the owner's classes)
        params = self.model.trainable_parameters(new) + (list(head.parameters()) if rc.train_head else [])
        for p in head.parameters():
            p.requires_grad_(rc.train_head)
        losses: list[float] = []
        if rc.epochs > 0:
            opt = torch.optim.AdamW(params, lr=rc.lr, weight_decay=rc.weight_decay)
            T, beta = rc.kd_temperature, rc.kd_beta
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
            self.model.set_adapter(new)
            self.model.train()
            bar = tqdm(range(rc.epochs), desc="restructure", disable=not self.cfg.progress, leave=False)
            for _ in bar:
                perm = torch.randperm(len(labels), generator=gen)
                tot = 0.0
                for s in range(0, len(labels), rc.batch_size):
                    ii = perm[s : s + rc.batch_size].tolist()
                    z = head(self._feats(x_s[ii], new))
                    tgt = torch.tensor([col[labels[i]] for i in ii], device=self.device)
                    loss = F.cross_entropy(z, tgt)
                    kd = z.new_zeros(())
                    for r in regions:
                        rows = [j for j, i in enumerate(ii) if owner[labels[i]] is r]
                        if not rows:
                            continue
                        zt = torch.stack([teach[ii[j]] for j in rows]).to(self.device)
                        zs = z[rows][:, owner_cols[id(r)].to(self.device)]
                        kd = kd + F.kl_div(
                            F.log_softmax(zs / T, 1),
                            F.log_softmax(zt / T, 1),
                            reduction="sum",
                            log_target=True,
                        )
                    loss = loss + beta * T * T * kd / len(ii)
                    if not torch.isfinite(loss):
                        raise FloatingPointError("non-finite restructuring loss")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * len(ii)
                losses.append(tot / len(labels))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            self.model.eval()
        if rc.refresh_ltm_prototypes:
            ds = TensorDataset(x_s, y_s)
            head.set_prototypes(self._prototypes(ds, y_s, head.classes, new).to(self.device))
        self.model.freeze_all()
        for p in head.parameters():
            p.requires_grad_(False)
        tasks = sorted(t for r in regions for t in r.tasks)
        for n in names:
            self.model.delete_adapter(n)
        mem.ltm = Region(new, "ltm", head, tasks)
        mem.stm = {}
        return RestructureReport(names, new, len(labels), list(head.classes), per_class, losses)

    def restructure_due(self, t: int, num_tasks: int | None = None) -> bool:
        return restructure_due(self.cfg.restructure.period, t, num_tasks)

    def after_task(self, t: int, num_tasks: int | None = None) -> RestructureReport | None:
        """Restructure when the period says so (spec §3.9)."""
        return self.restructure() if self.restructure_due(t, num_tasks) else None

    # ------------------------------------------------------------------ persistence
    def state_dict(self, include_backbone: bool = False) -> dict[str, Any]:
        """Everything the memory holds: adapters (peft LoRA tensors), heads, text, generator statistics."""

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
            }

        mem = self.memory
        out: dict[str, Any] = {
            "format": "sr-cis/1",
            "adapters": {
                n: {"r": r, "alpha": a, "state": self.model.adapter_state(n)}
                for n, (r, a) in self.model.adapter_ranks.items()
            },
            "ltm": region(mem.ltm) if mem.ltm is not None else None,
            "stm": {t: region(r) for t, r in mem.stm.items()},
            "text": mem.text.to_dict(),
            "ltm_generation": mem.ltm_generation,
            "tasks_seen": self.tasks_seen,
            "class_names": dict(self.class_names),
            "detector": self.detector.state_dict() if hasattr(self.detector, "state_dict") else None,
        }
        if isinstance(self.generator, GaussianPixelGenerator):
            out["generator"] = {k: (m, f, list(sh)) for k, (m, f, sh) in self.generator.stats.items()}
        if include_backbone:
            sd = self.model.backbone.state_dict()
            out["backbone"] = {
                k.replace(".base_layer", ""): v.detach().cpu().clone()
                for k, v in sd.items()
                if "lora_" not in k
            }
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a system whose small model has no adapters yet."""
        if not isinstance(state, Mapping) or state.get("format") != "sr-cis/1":
            raise ValueError("not an SR-CIS state (missing format 'sr-cis/1')")
        if self.model.adapters:
            raise ValueError(
                f"load into a fresh small model; this one already has adapters {self.model.adapters}"
            )
        if "backbone" in state:
            self.model.backbone.load_state_dict(state["backbone"], strict=True)
        for n, a in state["adapters"].items():
            self.model.add_task_adapter(n, r=a["r"], alpha=a["alpha"])
            self.model.load_adapter_state(n, a["state"])
        self.model.freeze_all()

        def region(d: Mapping) -> Region:
            head = PrototypeHead(d["classes"], d["weight"].shape[1], d["norm"], d["tau"])
            with torch.no_grad():
                head.weight.copy_(d["weight"])
                head.bias.copy_(d["bias"])
            head.requires_grad_(False)
            return Region(d["adapter"], d["kind"], head.to(self.device), list(d["tasks"]))

        mem = ComplementaryMemory()
        mem.ltm = region(state["ltm"]) if state["ltm"] is not None else None
        mem.stm = {int(t): region(r) for t, r in state["stm"].items()}
        mem.text = TextMemory.from_dict(state["text"])
        mem.ltm_generation = int(state["ltm_generation"])
        self.memory = mem
        self.tasks_seen = int(state["tasks_seen"])
        self.class_names.update({int(k): v for k, v in state["class_names"].items()})
        if state.get("detector") is not None and hasattr(self.detector, "load_state_dict"):
            self.detector.load_state_dict(state["detector"])
        if "generator" in state and isinstance(self.generator, GaussianPixelGenerator):
            self.generator.stats = {k: (m, f, tuple(sh)) for k, (m, f, sh) in state["generator"].items()}

    def save(self, path, include_backbone: bool = False):
        from papers_shared.checkpoints import atomic_save

        return atomic_save(self.state_dict(include_backbone), path)

    def load(self, path) -> None:
        from pathlib import Path

        from papers_shared.checkpoints import load_checkpoint

        if not Path(path).is_file():
            raise FileNotFoundError(f"SR-CIS state file not found: {path}")
        state = load_checkpoint(path)
        if isinstance(state, dict) and "system" in state:  # a runner checkpoint
            state = state["system"]
        self.load_state_dict(state)

    # ------------------------------------------------------------------ inference (spec §3.6-3.8)
    def reset_stream(self) -> None:
        """Start a new test stream (CA-OAD statistics are reset)."""
        self.detector.reset()

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
                new, answers = self.slow.decide(x[idx].cpu(), out.topk[idx], out.pred[idx])
                pred[idx] = new
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

    def evaluate(
        self, test: Dataset, task_of_class: Mapping[int, int] | None = None, max_samples=None
    ) -> dict:
        """Accuracy of fast and fast+slow, per-task accuracies, routing and MLLM fix/harm rates."""
        self.reset_stream()
        loader = _feature_loader(test, self.cfg.fast.batch_size, False, None, self.cfg.num_workers)
        ys, fast, final, flags = [], [], [], []
        seen = 0
        for xb, yb in loader:
            if max_samples is not None and seen >= max_samples:
                break
            p, info = self.predict(xb)
            ys.append(yb)
            fast.append(info["fast_pred"])
            final.append(p)
            flags.append(info["flags"])
            seen += xb.shape[0]
        if not ys:
            raise ValueError("empty test set")
        return summarize(
            torch.cat(ys), torch.cat(fast), torch.cat(final), torch.cat(flags), task_of_class
        ) | {
            "passes": len(self.fast().regions()),
            "storage": self.memory.storage_report(self.model),
        }


def summarize(y, fast, final, flags, task_of_class=None) -> dict:
    """Accuracy / routing statistics of one evaluation (spec §3.9)."""
    y, fast, final, flags = y.cpu(), fast.cpu(), final.cpu(), flags.cpu().bool()
    n = y.numel()
    fr, fw = fast == y, fast != y
    out = {
        "n": n,
        "acc_fast": float(fr.float().mean()),
        "acc": float((final == y).float().mean()),
        "route_frac": float(flags.float().mean()),
        "fix_rate": float((flags & fw & (final == y)).float().sum() / max(int(flags.sum()), 1)),
        "harm_rate": float((flags & fr & (final != y)).float().sum() / max(int(flags.sum()), 1)),
        "acc_fast_flagged": float(fr[flags].float().mean()) if flags.any() else math.nan,
        "acc_fast_unflagged": float(fr[~flags].float().mean()) if (~flags).any() else math.nan,
    }
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
