"""Run a paper table: every method of ``cfg.methods`` on one benchmark with one shared backbone, tasks in
sequence, evaluation on all seen classes after each task; accuracy matrices, routing and storage
statistics; a checkpoint after every task (``--resume``); ``results.json``.

Runs unchanged under ``torchrun --nproc-per-node N``: training is data-parallel (:mod:`sr_cis.trainer`),
evaluation is sharded, rank 0 writes checkpoints and results, every rank reads a checkpoint on resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from papers_shared.checkpoints import CheckpointManager, restore_rng_state
from papers_shared.distributed import barrier, init_distributed, is_main_process, on_main_process
from papers_shared.errors import ConfigError
from papers_shared.metrics import AccuracyMatrix, forgetting
from papers_shared.results import write_json
from sr_cis.baselines import SR_CIS_VARIANTS, MLLMZeroShot, SeqLoRA, SimpleCIL, variant_config
from sr_cis.config import METHOD_NAMES, ExperimentConfig, SRCISConfig
from sr_cis.data import CILBenchmark, eval_subset, hold_out_pretrain, stack_dataset
from sr_cis.scenario import GaussianPixelGenerator, build_generator
from sr_cis.system import SRCIS

__all__ = ["build_method", "evaluate_memory", "prepare", "run_experiment", "run_method", "summarize_rows"]


def build_method(
    name: str,
    cfg: SRCISConfig,
    small_model,
    large_model=None,
    class_names: dict[int, str] | None = None,
    device="cpu",
    seq_epochs: int | None = None,
    *,
    seed: int = 0,
    corpus_generator: GaussianPixelGenerator | None = None,
):
    """A method object with ``train_task``, ``after_task`` and ``evaluate`` (the runner's interface).

    ``corpus_generator`` is the frozen text-to-pixel stand-in fitted on the pre-training corpus, used by
    SR-CIS variants whose config asks for ``generator.kind=gaussian`` with ``gaussian_source=corpus``.
    """
    if name in SR_CIS_VARIANTS:
        vc = variant_config(cfg, name)
        gen = None
        if vc.restructure.period is not None:
            g = vc.generator
            if g.kind == "gaussian" and g.gaussian_source == "corpus":
                if corpus_generator is None:
                    raise ConfigError(
                        f"{name}: generator.gaussian_source=corpus needs a pre-training corpus (tiny ViT with "
                        "pretrain_epochs > 0); use generator.kind=sdxl or gaussian_source=task"
                    )
                gen = corpus_generator
            else:
                gen = build_generator(g, device)
        lm = large_model if (vc.slow.enabled or vc.text.describe_mode == "mllm") else None
        if vc.text.describe_mode == "mllm" and lm is None:
            raise ConfigError(
                f"{name}: text.describe_mode=mllm needs a large model (system.slow.model_id); "
                "set system.text.describe_mode=class_name_only to run without one"
            )
        return SRCIS(small_model, lm, gen, vc, class_names, device, seed=seed)
    if name in ("seq_lora", "seq_lora_random_head"):
        init = "prototype" if name == "seq_lora" else "random"
        return SeqLoRA(small_model, cfg, seq_epochs, device, init=init, seed=seed)
    if name == "simple_cil":
        return SimpleCIL(small_model, cfg, device)
    if name == "mllm_zero_shot":
        if large_model is None:
            raise ConfigError("mllm_zero_shot needs a large model (system.slow.model_id)")
        return MLLMZeroShot(large_model, class_names or {})
    raise ConfigError(f"unknown method {name!r}; choose from {list(METHOD_NAMES)}")


def summarize_rows(rows: list[dict], num_tasks: int) -> dict[str, Any]:
    """Accuracy matrices, final / average accuracy and forgetting of a method's per-task evaluations."""
    done = len(rows)
    out: dict[str, Any] = {"tasks_done": done, "steps": rows}
    for key, src in (("acc", "per_task"), ("acc_fast", "per_task_fast")):
        m = AccuracyMatrix(num_tasks)
        for t, r in enumerate(rows):
            for s in range(t + 1):
                if s in r[src] or str(s) in r[src]:
                    m.set(t, s, r[src].get(s, r[src].get(str(s))))
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
    *,
    corpus_generator: GaussianPixelGenerator | None = None,
    stop_after: int | None = None,
    inspect: Callable[[Any, int, Any], dict] | None = None,
) -> dict[str, Any]:
    """Train ``name`` task by task on ``bench`` and evaluate after each task on all seen classes.

    SR-CIS variants write a checkpoint after every task (``out_dir/<name>/ckpt``, rank 0) and
    ``resume=True`` restarts after the last completed task. ``stop_after`` ends the run after that many
    tasks (the checkpoint stays, e.g. to resume later). ``inspect(method, t, test)`` may add entries to
    each task's row (used by the quick run for inference ablations on the trained memory).
    """
    T = len(bench.split)
    method = build_method(
        name, cfg.system, make_small_model(), large_model, bench.class_names, device, cfg.seq_lora_epochs,
        seed=cfg.seed, corpus_generator=corpus_generator,
    )  # fmt: skip
    rows: list[dict] = []
    start = 0
    mgr = CheckpointManager(Path(out_dir) / name / "ckpt", keep=cfg.checkpoint_keep) if out_dir else None
    if resume and mgr is not None and isinstance(method, SRCIS):
        state = mgr.load_latest(restore_rng=False)
        if state is not None:
            method.load_state_dict(state["system"], source=str(mgr.latest_path()))
            restore_rng_state(state["rng"])  # after loading: as if the run had never stopped
            rows = list(state["rows"])
            start = int(state["task"]) + 1
    task_of_class = {c: s.index for s in bench.split for c in s.classes}
    reports = []
    end = T if stop_after is None else min(T, int(stop_after))
    for t in range(start, end):
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
        if isinstance(method, SRCIS) and method.task_reports:
            res["stm"] = {k: v for k, v in method.task_reports[-1].items() if k != "losses"}
        if inspect is not None:
            res.update(inspect(method, t, test))
        rows.append(res)
        if mgr is not None and isinstance(method, SRCIS):
            if is_main_process():
                tiny = cfg.system.small.model_id is None  # a backbone pre-trained here: store it too
                mgr.save(t, {"task": t, "rows": rows, "system": method.state_dict(include_backbone=tiny)})
            barrier()
    out = summarize_rows(rows, T)
    out["restructures"] = reports
    return out


def prepare(cfg: ExperimentConfig, device=None, bench: CILBenchmark | None = None):
    """The benchmark, the frozen small model (a tiny ViT is warmed up here on a held-out split) and, when
    there is a pre-training corpus, the frozen corpus replay generator."""
    from papers_shared.device import get_device, seed_everything
    from sr_cis.data import load_benchmark
    from sr_cis.small_model import build_small_model
    from sr_cis.trainer import pretrain_backbone

    device = device or get_device(cfg.system.device)
    seed_everything(cfg.seed)
    small_cfg = cfg.system.small
    size = small_cfg.tiny.image_size if small_cfg.model_id is None else None
    bench = bench or load_benchmark(cfg.data, image_size=size)
    base = build_small_model(small_cfg).to(device)
    corpus = None
    if small_cfg.model_id is None and cfg.pretrain_epochs > 0:
        bench, pre = hold_out_pretrain(bench, cfg.pretrain_frac, cfg.seed)
        pretrain_backbone(
            base, pre, cfg.pretrain_epochs, cfg.pretrain_lr, cfg.pretrain_batch_size,
            seed=cfg.seed, progress=cfg.system.progress,
        )  # fmt: skip
        g = cfg.system.generator
        x, y = stack_dataset(pre)
        corpus = GaussianPixelGenerator(g.gaussian_rank, g.gaussian_noise).fit_corpus(x, y, bench.class_names)
    return bench, base, corpus


def run_experiment(
    cfg: ExperimentConfig,
    large_model=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    bench: CILBenchmark | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Every method of ``cfg.methods``; writes ``<out_dir>/results.json`` (rank 0) and returns the results."""
    info = init_distributed(cfg.system.device)
    if not on_main_process(True):
        cfg = copy.deepcopy(cfg)
        cfg.system.progress = False
    bench, base, corpus = prepare(cfg, info.device, bench)
    if large_model is None and cfg.system.slow.model_id:
        from sr_cis.slow_path import build_large_model

        large_model = build_large_model(cfg.system.slow.model_id, device=info.device)
    results = {}
    for name in cfg.methods:
        torch.manual_seed(cfg.seed)
        results[name] = run_method(
            name, cfg, bench, lambda: copy.deepcopy(base), large_model, out_dir, resume, info.device,
            corpus_generator=corpus, stop_after=stop_after,
        )  # fmt: skip
    if out_dir is not None and is_main_process():
        write_json(results, Path(out_dir) / "results.json")
    barrier()
    return results


def evaluate_memory(cfg: ExperimentConfig, state: str | Path) -> dict[str, Any]:
    """Evaluate a saved SR-CIS memory (``SRCIS.save`` safetensors or a run checkpoint) on the test split
    of ``cfg``'s benchmark, over the tasks the memory has seen (no text is written, nothing replayed)."""
    from sr_cis.data import load_benchmark
    from sr_cis.small_model import build_small_model

    state = Path(state)
    if not state.is_file():
        raise FileNotFoundError(f"SR-CIS memory file not found: {state}")
    info = init_distributed(cfg.system.device)
    cfg = copy.deepcopy(cfg)
    cfg.system.text.describe_mode = "class_name_only"
    cfg.system.restructure.period = None
    small_cfg = cfg.system.small
    bench = load_benchmark(
        cfg.data, image_size=small_cfg.tiny.image_size if small_cfg.model_id is None else None
    )
    large = None
    if cfg.system.slow.model_id:
        from sr_cis.slow_path import build_large_model

        large = build_large_model(cfg.system.slow.model_id, device=info.device)
    system = build_method(
        "sr_cis",
        cfg.system,
        build_small_model(small_cfg),
        large,
        bench.class_names,
        info.device,
        seed=cfg.seed,
    )
    system.load(state)
    test = eval_subset(
        ConcatDataset([bench.task_test(s) for s in range(system.tasks_seen)]), cfg.max_eval_samples, cfg.seed
    )
    res = system.evaluate(test, {c: s.index for s in bench.split for c in s.classes})
    res.pop("storage", None)
    return res
