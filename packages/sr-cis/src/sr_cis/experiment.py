"""One runner for SR-CIS and its baselines (spec §3.9, §4): tasks in sequence, evaluation on all seen
classes after each task, accuracy matrices, routing and storage statistics, atomic checkpoints + resume."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from papers_shared.checkpoints import CheckpointManager
from papers_shared.metrics import AccuracyMatrix, forgetting
from sr_cis.baselines import SR_CIS_VARIANTS, MLLMZeroShot, SeqLoRA, SimpleCIL, variant_config
from sr_cis.config import ExperimentConfig, SRCISConfig
from sr_cis.data import CILBenchmark, dataset_labels
from sr_cis.scenario import build_generator
from sr_cis.system import SRCIS

__all__ = ["METHODS", "build_method", "eval_subset", "pretrain_backbone", "run_experiment", "run_method"]

METHODS = (*SR_CIS_VARIANTS, "seq_lora", "seq_lora_random_head", "simple_cil", "mllm_zero_shot")


def pretrain_backbone(
    small_model, train: Dataset, epochs: int, lr: float = 1e-3, batch_size: int = 64, progress: bool = False
) -> None:
    """Supervised warm-up of a tiny random backbone (stands in for pre-training, spec §8), then freeze."""
    if small_model.adapters:
        raise ValueError("pre-train the backbone before adding adapters")
    if epochs <= 0:
        return
    labels = dataset_labels(train)
    n_cls = int(labels.max()) + 1
    bb = small_model.backbone
    dev = next(bb.parameters()).device
    head = nn.Linear(small_model.dim, n_cls).to(dev)
    for p in bb.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(bb.parameters()) + list(head.parameters()), lr=lr)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    bb.train()
    for _ in tqdm(range(epochs), desc="pre-train backbone", disable=not progress, leave=False):
        for xb, yb in DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen):
            loss = F.cross_entropy(head(small_model.features(xb.to(dev))), yb.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    bb.eval()
    for p in bb.parameters():
        p.requires_grad_(False)


def build_method(
    name: str,
    cfg: SRCISConfig,
    small_model,
    large_model=None,
    class_names: dict[int, str] | None = None,
    device="cpu",
    seq_epochs: int | None = None,
):
    """A method object with ``train_task``, ``after_task`` and ``evaluate`` (the shared runner's interface)."""
    if name in SR_CIS_VARIANTS:
        vc = variant_config(cfg, name)
        gen = build_generator(vc.generator, device) if vc.restructure.period is not None else None
        lm = large_model if (vc.slow.enabled or vc.text.describe_mode == "mllm") else None
        if vc.text.describe_mode == "mllm" and lm is None:
            raise ValueError(
                f"{name}: text.describe_mode='mllm' needs a large model (slow.model_id or a built model); "
                "set text.describe_mode=class_name_only to run without one"
            )
        return SRCIS(small_model, lm, gen, vc, class_names, device)
    if name in ("seq_lora", "seq_lora_random_head"):
        init = "prototype" if name == "seq_lora" else "random"
        return SeqLoRA(small_model, cfg, seq_epochs, device, init=init)
    if name == "simple_cil":
        return SimpleCIL(small_model, cfg, device)
    if name == "mllm_zero_shot":
        if large_model is None:
            raise ValueError("mllm_zero_shot needs a large model")
        return MLLMZeroShot(large_model, class_names or {})
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


def eval_subset(test: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``max_samples`` test samples (all of them when ``None``)."""
    if max_samples is None or len(test) <= max_samples:
        return test
    g = torch.Generator().manual_seed(seed)
    return Subset(test, torch.randperm(len(test), generator=g)[:max_samples].tolist())


def _summary(rows: list[dict], num_tasks: int) -> dict[str, Any]:
    done = len(rows)
    out: dict[str, Any] = {"tasks_done": done, "steps": rows}
    for key, src in (("acc", "per_task"), ("acc_fast", "per_task_fast")):
        m = AccuracyMatrix(num_tasks)
        for t, r in enumerate(rows):
            for s in range(t + 1):
                if s in r[src]:
                    m.set(t, s, r[src][s])
        out[f"matrix_{key}"] = m.tolist()
        accs = [r[key] for r in rows]
        out[f"final_{key}"] = accs[-1] if accs else float("nan")
        out[f"avg_{key}"] = float(np.mean(accs)) if accs else float("nan")
        out[f"forgetting_{key}"] = forgetting(m) if m.completed_sessions() == done and done else float("nan")
    out["route_frac"] = float(np.mean([r["route_frac"] for r in rows])) if rows else 0.0
    return out


def run_method(
    name: str,
    cfg: ExperimentConfig,
    bench: CILBenchmark,
    make_small_model: Callable[[], Any],
    large_model=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device="cpu",
) -> dict[str, Any]:
    """Train ``name`` task by task on ``bench`` and evaluate after each task on all seen classes.

    SR-CIS variants write a checkpoint after every task (``out_dir/<name>/ckpt``); ``resume=True`` restarts
    after the last completed task. Other baselines re-run from scratch (they are cheap).
    """
    T = len(bench.split)
    small = make_small_model()
    method = build_method(
        name, cfg.system, small, large_model, bench.class_names, device, cfg.seq_lora_epochs
    )
    rows: list[dict] = []
    start = 0
    mgr = CheckpointManager(Path(out_dir) / name / "ckpt", keep=cfg.checkpoint_keep) if out_dir else None
    if resume and mgr is not None and isinstance(method, SRCIS):
        state = mgr.load_latest()
        if state is not None:
            method.load_state_dict(state["system"])
            rows = list(state["rows"])
            start = int(state["task"]) + 1
    task_of_class = {c: s.index for s in bench.split for c in s.classes}
    reports = []
    for t in tqdm(range(start, T), desc=name, disable=not cfg.system.progress):
        method.train_task(bench.task_train(t, cfg.data.shots, cfg.seed), t, bench.class_names)
        rep = method.after_task(t, T)
        if rep is not None:
            reports.append(
                {"task": t, "merged": rep.merged, "new": rep.new_adapter, "replay": rep.replay_samples}
            )
        test = eval_subset(
            ConcatDataset([bench.task_test(s) for s in range(t + 1)]), cfg.max_eval_samples, cfg.seed
        )
        res = method.evaluate(test, task_of_class)
        rows.append(res)
        if mgr is not None and isinstance(method, SRCIS):
            tiny = cfg.system.small.model_id is None  # random/pre-trained-here backbone: store it too
            mgr.save(t, {"task": t, "rows": rows, "system": method.state_dict(include_backbone=tiny)})
    out = _summary(rows, T)
    out["restructures"] = reports
    return out


def _subset_excluding(ds: Dataset, labels: torch.Tensor, frac: float, seed: int) -> tuple[Subset, Subset]:
    from papers_shared.data import stratified_split

    rest, pre = stratified_split(labels, test_frac=frac, seed=seed)
    return Subset(ds, rest.tolist()), Subset(ds, pre.tolist())


def run_experiment(
    cfg: ExperimentConfig,
    large_model=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    bench: CILBenchmark | None = None,
) -> dict[str, Any]:
    """Every method of ``cfg.methods`` on the benchmark of ``cfg.data`` with one shared backbone."""
    from papers_shared.device import get_device, seed_everything
    from sr_cis.data import load_benchmark
    from sr_cis.small_model import build_small_model

    device = get_device(cfg.system.device)
    seed_everything(cfg.seed)
    small_cfg = cfg.system.small
    size = small_cfg.tiny.image_size if small_cfg.model_id is None else None
    bench = bench or load_benchmark(cfg.data, image_size=size)
    base = build_small_model(small_cfg)
    if small_cfg.model_id is None and cfg.pretrain_epochs > 0:
        rest, pre = _subset_excluding(bench.train, bench.train_labels, cfg.pretrain_frac, cfg.seed)
        pretrain_backbone(base, pre, cfg.pretrain_epochs, progress=cfg.system.progress)
        bench = CILBenchmark(
            rest,
            bench.test,
            _restrict(bench.split, rest),
            bench.class_names,
            dataset_labels(rest),
            bench.test_labels,
        )
    if large_model is None and cfg.system.slow.model_id:
        from sr_cis.slow_path import build_large_model

        large_model = build_large_model(cfg.system.slow.model_id, device=device)
    results = {}
    for name in cfg.methods:
        seed_everything(cfg.seed)
        results[name] = run_method(
            name, cfg, bench, lambda: copy.deepcopy(base), large_model, out_dir, resume, device
        )
    return results


def _restrict(split, subset: Subset):
    """Re-index a split's train indices onto ``subset`` (test indices unchanged)."""
    from papers_shared.sessions import IncrementalSplit, Session

    pos = {int(i): j for j, i in enumerate(subset.indices)}
    sessions = []
    for s in split.sessions:
        tr = torch.tensor([pos[int(i)] for i in s.train_idx if int(i) in pos], dtype=torch.long)
        sessions.append(Session(s.index, list(s.classes), tr, s.test_idx))
    return IncrementalSplit(sessions, split.class_order, split.protocol, split.seed)
