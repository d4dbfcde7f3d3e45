"""Online class-incremental training of ICL's System1 and the stream runner shared by every method.

:class:`Learner` is what the runner drives: ``begin_task`` / ``observe`` (one online batch) /
``end_task`` / ``scores`` (class scores over the seen classes). :class:`ICLLearner` implements spec
§3.12 (CL-vMF + EM + replay); the baselines of spec §4 live in :mod:`icl_vmf.baselines`.
:func:`run_stream` trains one learner on a :class:`~icl_vmf.data.StreamData`, evaluates after every
task (class-IL and task-IL accuracy per task, vMF-ODI statistics) and, after the last task, lets
System2 overrule ODI-flagged samples; it checkpoints atomically after every task and resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from icl_vmf.augment import ViewAugment, random_hflip
from icl_vmf.buffer import ClassBalancedReservoir
from icl_vmf.data import StreamData, iterate_batches
from icl_vmf.em import EMSchedule
from icl_vmf.interaction import InteractionStats, InteractiveClassifier
from icl_vmf.losses import cl_vmf_loss
from icl_vmf.odi import VMFOutlierDetector
from icl_vmf.system1 import System1
from icl_vmf.system2 import System2
from papers_shared.metrics import forgetting

__all__ = ["ICLLearner", "Learner", "StreamResult", "evaluate", "make_augment", "run_stream"]


def make_augment(cfg) -> ViewAugment | None:
    """The second-view augmentation of an :class:`~icl_vmf.config.AugmentConfig` (None when disabled)."""
    if not cfg.enabled:
        return None
    return ViewAugment(
        scale=tuple(cfg.crop_scale),
        degrees=cfg.degrees,
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        saturation=cfg.saturation,
        hue=cfg.hue,
        grayscale_p=cfg.grayscale_p,
    )


class Learner(nn.Module):
    """Base of every method on the stream: owns a replay buffer, the train flip and the second view."""

    name = "learner"

    def __init__(
        self, num_classes: int, classes_per_task: int, cfg, device: torch.device, seed: int = 0
    ) -> None:
        super().__init__()
        self.num_classes, self.classes_per_task = num_classes, classes_per_task
        self.cfg, self.device = cfg, torch.device(device)
        self.task = 0
        self.seen_classes = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = make_augment(cfg.augment)
        dtype = torch.uint8 if cfg.train.buffer_dtype == "uint8" else torch.float32
        self.buffer = ClassBalancedReservoir(
            cfg.train.buffer_size, num_classes, device, dtype, seed=seed + 1,
            legacy_sampling=cfg.train.legacy_buffer_sampling,
        )  # fmt: skip

    # -- augmentation helpers ------------------------------------------------------------
    def train_view(self, x: torch.Tensor) -> torch.Tensor:
        """The torchvision train transform's random horizontal flip on the current batch (spec §3.9)."""
        return random_hflip(x, generator=self.generator) if self.cfg.augment.hflip else x

    def replay_view(self, x: torch.Tensor) -> torch.Tensor:
        """The buffer's train transform on replayed samples (random horizontal flip)."""
        return random_hflip(x, generator=self.generator) if self.cfg.augment.hflip_replay else x

    def with_second_view(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cat[x, aug(x)]`` and duplicated labels (spec §3.7 step 1); unchanged without augmentation."""
        if self.augment is None:
            return x, y
        return torch.cat([x, self.augment(x, self.generator)]), torch.cat([y, y])

    # -- protocol ------------------------------------------------------------------------
    def begin_task(self, t: int) -> None:
        self.task = t
        self.buffer.reset_screening()

    def observe(self, x: torch.Tensor, y: torch.Tensor, batch_index: int) -> dict[str, float]:
        raise TypeError(f"{type(self).__name__} must implement observe()")

    def end_task(self, t: int) -> None:
        self.seen_classes = (t + 1) * self.classes_per_task

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} must implement scores()")

    # -- state ---------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Module state without frozen encoder weights (they are reloaded from the hub/config)."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad and ".vit." in f".{n}"}
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def full_state(self) -> dict[str, Any]:
        return {
            "module": self.trainable_state(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "task": self.task,
            "seen_classes": self.seen_classes,
        }

    def load_full_state(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.load_state_dict(state["module"], strict=False)
        missing = [k for k in missing if ".vit." not in f".{k}"]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint does not fit this learner: missing {missing}, unexpected {unexpected}"
            )
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.task, self.seen_classes = state["task"], state["seen_classes"]


class ICLLearner(Learner):
    """ICL System1 trained online with CL-vMF, the EM schedule and class-balanced replay (spec §3.12)."""

    name = "icl"

    def __init__(self, system1: System1, cfg, device: torch.device, seed: int = 0) -> None:
        mem = system1.memory
        super().__init__(mem.num_classes, mem.classes_per_task, cfg, device, seed)
        self.system1 = system1.to(self.device)
        self._build_optimizers()

    def _build_optimizers(self) -> None:
        tc = self.cfg.train
        self.memory_opt = torch.optim.Adam(
            self.system1.memory.working_parameters(), lr=tc.lr, weight_decay=tc.weight_decay
        )
        self.projection_opt = torch.optim.Adam(
            self.system1.projection_parameters(), lr=tc.lr, weight_decay=tc.weight_decay
        )
        self.em = EMSchedule(self.memory_opt, self.projection_opt, tc.em_steps)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"memory": self.memory_opt, "projection": self.projection_opt}

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.system1.memory.set_current_task(t)
        self.system1.train()
        if self.cfg.train.reset_optimizers_each_task and t > 0:
            self._build_optimizers()
        self._task_batches = 0

    def _loss(self, x: torch.Tensor, y: torch.Tensor, phase: str, input_grad: bool = False) -> torch.Tensor:
        """CL-vMF on ``[x, aug(x)]`` plus (task >= 1, buffer not empty) on a fresh replay draw and its view;
        current and replay samples never share a similarity matrix (spec §3.7)."""
        lc = self.cfg.loss
        xa, ya = self.with_second_view(x, y)
        parts = [(xa, ya)]
        if self.task >= 1 and not self.buffer.is_empty():
            xb, yb = self.buffer.sample(self.cfg.train.minibatch_size, transform=self.replay_view)
            parts.append(self.with_second_view(xb.to(self.device), yb.to(self.device)))
        enc = self.system1.encoder
        enc.input_grad = input_grad
        try:
            H = self.system1.features(torch.cat([p[0] for p in parts]))
        finally:
            enc.input_grad = False
        loss, start = 0.0, 0
        for j, (xp, yp) in enumerate(parts):
            S = self.system1.set2set_logits(None, yp, phase, H=H[start : start + xp.shape[0]])
            start += xp.shape[0]
            term = cl_vmf_loss(S, yp, lc.kappa, lc.lmbda, lc.delta, lc.gamma)
            loss = loss + (term if j == 0 else lc.replay_weight * term)
        return loss

    def _screen(self, x_raw: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """Gradient screening admission (spec §3.9): per-sample mean over channels of the Frobenius norm
        of d loss / d input; admitted when below the class's running minimum."""
        xg = x.detach().clone().requires_grad_(True)
        loss = self._loss(xg, y, "both", input_grad=True)
        (grad,) = torch.autograd.grad(loss, xg)
        norms = torch.linalg.matrix_norm(grad, ord="fro", dim=(2, 3)).mean(1)
        self.buffer.add(x_raw, y, scores=norms.detach().cpu())

    def observe(self, x_raw: torch.Tensor, y: torch.Tensor, batch_index: int) -> dict[str, float]:
        x_raw, y = x_raw.to(self.device), y.to(self.device)
        x = self.train_view(x_raw)
        if self.cfg.train.buffer_admission == "screening":
            self._screen(x_raw, x, y)
        else:
            self.buffer.add(x_raw, y)  # insertion precedes replay sampling (code)
        index = batch_index if self.cfg.train.em_index == "epoch" else self._task_batches
        self._task_batches += 1
        return self.em.step(lambda phase: self._loss(x, y, phase), index)

    def end_task(self, t: int) -> None:
        self.system1.memory.consolidate(t)
        super().end_task(t)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.system1.eval()
        return self.system1.scores(x.to(self.device))


# ---------------------------------------------------------------------------------------------
@dataclass
class StreamResult:
    """Everything one (method, seed) run measured. Accuracies are fractions in [0, 1]."""

    method: str
    seed: int
    dataset: str
    class_il: list[list[float | None]]  # a[t][s] after task t on task s
    task_il: list[list[float | None]]
    odi: list[dict[str, float]] = field(default_factory=list)  # per evaluation (after each task)
    final_class_il_with_system2: list[float] | None = None  # per task, after the last task
    system2: dict[str, float] | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean loss per task

    @staticmethod
    def _avg(row: list[float | None]) -> float:
        vals = [v for v in row if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def average_per_task(self) -> list[float]:
        """Mean class-IL accuracy over the seen tasks after each task (the code's mean_acc curve)."""
        return [self._avg(r) for r in self.class_il if any(v is not None for v in r)]

    @property
    def final_average(self) -> float:
        return self.average_per_task[-1]

    @property
    def final_average_task_il(self) -> float:
        return [self._avg(r) for r in self.task_il if any(v is not None for v in r)][-1]

    @property
    def final_average_with_system2(self) -> float | None:
        return (
            None
            if self.final_class_il_with_system2 is None
            else float(np.mean(self.final_class_il_with_system2))
        )

    @property
    def forgetting(self) -> float:
        arr = np.array([[np.nan if v is None else v for v in r] for r in self.class_il])
        return forgetting(arr)

    @property
    def bwt(self) -> float:
        """Backward transfer ``mean_{s<T} (a[T, s] - a[s, s])``."""
        a = self.class_il
        T = len(a) - 1
        return float(np.mean([a[T][s] - a[s][s] for s in range(T)])) if T > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "final_class_il": self.final_average,
            "final_task_il": self.final_average_task_il,
            "final_class_il_with_system2": self.final_average_with_system2,
            "forgetting": self.forgetting,
            "bwt": self.bwt,
            "average_per_task": self.average_per_task,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["summary"] = self.summary()
        return d


@torch.no_grad()
def evaluate(
    learner: Learner,
    data: StreamData,
    upto: int,
    cfg,
    system2: System2 | None = None,
) -> tuple[list[float], list[float], InteractionStats, list[float] | None]:
    """Accuracy on the test set of every task ``<= upto`` (class-IL, task-IL by masking to the task's
    classes), vMF-ODI statistics per test mini-batch of ``cfg.train.test_batch_size`` from one task's
    loader (spec §3.10), and, with ``system2``, the accuracy after the interaction."""
    detector = VMFOutlierDetector(cfg.odi.z_threshold, cfg.odi.scope, cfg.odi.mode, cfg.odi.random_fraction)
    inter = InteractiveClassifier(learner.scores, system2, detector, cfg.system2.k, data.class_names)
    C = data.classes_per_task
    cil, til, final = [], [], []
    stats = InteractionStats()
    for s in range(upto + 1):
        n = ok1 = okt = okf = 0
        for x, y in iterate_batches(data.test_sets[s], cfg.train.test_batch_size, shuffle=False):
            x, y = x.to(learner.device), y.to(learner.device)
            pred, info = inter.predict(x, y, use_system2=system2 is not None)
            scores, ids = info.scores, info.class_ids
            in_task = (ids >= s * C) & (ids < (s + 1) * C)
            tpred = ids[scores.masked_fill(~in_task.to(scores.device), float("-inf")).argmax(1)]
            stats.update(info, pred, y)
            n += y.numel()
            ok1 += int((info.system1_pred == y).sum())
            okt += int((tpred == y).sum())
            okf += int((pred == y).sum())
        cil.append(ok1 / n)
        til.append(okt / n)
        final.append(okf / n)
    return cil, til, stats, final if system2 is not None else None


def run_stream(
    learner: Learner,
    data: StreamData,
    cfg,
    seed: int = 0,
    system2: System2 | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> StreamResult:
    """Train ``learner`` task by task (``cfg.train.n_epochs`` shuffled epochs of ``batch_size``), evaluate
    after every task; System2 is consulted in the last evaluation only (``system2.final_only``, code) or
    in every evaluation. With ``checkpoint_dir`` the run is checkpointed after every task and
    ``resume=True`` continues from the last completed task."""
    from tqdm.auto import tqdm

    from papers_shared.checkpoints import CheckpointManager

    T = data.num_tasks
    res = StreamResult(
        learner.name, seed, data.name, [[None] * T for _ in range(T)], [[None] * T for _ in range(T)]
    )
    start_task = 0
    mgr = CheckpointManager(checkpoint_dir, keep=1) if checkpoint_dir is not None else None
    if mgr is not None and resume:
        state = mgr.load_latest(map_location=learner.device)
        if state is not None:
            learner.load_full_state(state["learner"])
            saved = state["result"]
            res.class_il, res.task_il, res.odi, res.losses = (
                saved["class_il"],
                saved["task_il"],
                saved["odi"],
                saved["losses"],
            )
            res.train_seconds, res.eval_seconds = saved["train_seconds"], saved["eval_seconds"]
            start_task = state["step"] + 1
    for t in range(start_task, T):
        t0 = time.perf_counter()
        learner.begin_task(t)
        losses = []
        for epoch in range(cfg.train.n_epochs):
            g = torch.Generator().manual_seed(seed * 100_003 + t * 101 + epoch)
            batches = iterate_batches(data.train_sets[t], cfg.train.batch_size, True, g, cfg.data.num_workers)
            total = -(-len(data.train_sets[t]) // cfg.train.batch_size)
            for i, (x, y) in enumerate(
                tqdm(
                    batches,
                    total=total,
                    desc=f"{learner.name} task {t} ep {epoch}",
                    disable=not cfg.train.progress,
                    leave=False,
                )
            ):
                out = learner.observe(x, y, i)
                losses.append(out.get("projection", next(iter(out.values()))))
        learner.end_task(t)
        res.train_seconds += time.perf_counter() - t0
        res.losses.append(float(np.mean(losses)) if losses else float("nan"))
        t1 = time.perf_counter()
        last = t == T - 1
        use2 = system2 if (system2 is not None and (last or not cfg.system2.final_only)) else None
        cil, til, stats, final = evaluate(learner, data, t, cfg, use2)
        res.eval_seconds += time.perf_counter() - t1
        for s in range(t + 1):
            res.class_il[t][s], res.task_il[t][s] = cil[s], til[s]
        res.odi.append(stats.as_dict())
        if final is not None and last:
            res.final_class_il_with_system2 = final
            res.system2 = stats.as_dict()
        if mgr is not None:
            mgr.save(
                t,
                {
                    "learner": learner.full_state(),
                    "result": {
                        k: getattr(res, k)
                        for k in ("class_il", "task_il", "odi", "losses", "train_seconds", "eval_seconds")
                    },
                },
            )
    return res
