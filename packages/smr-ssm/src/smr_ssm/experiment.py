"""Runs a table from an :class:`~smr_ssm.config.ExperimentConfig` and writes its results.

* :func:`run_lm` - WikiText-103 language modelling (perplexity), one host with or without SMR;
* :func:`run_lra` - one Long Range Arena task (accuracy);
* :func:`run_nss` - the sampling-shift experiment (the quick reproduction): per seed, the host with and
  without SMR (same initial weights) and optionally a model given the true steps, on every test grid;
* :func:`run_bench` - forward + backward time of layers with and without SMR.

``run_lm`` and ``run_lra`` run unchanged in one process or under ``torchrun`` / ``accelerate launch``:
data are prepared by rank 0 first, training is data-parallel (:class:`~smr_ssm.trainer.Trainer`),
evaluation batches are sharded over the processes and their sums gathered, and rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from papers_shared import distributed as dist
from papers_shared.checkpoints import CheckpointError, load_checkpoint, load_safetensors
from papers_shared.config import config_to_dict, save_config
from papers_shared.device import seed_everything
from papers_shared.results import write_json
from papers_shared.ssm.modules import validation
from smr_ssm.config import ExperimentConfig, NSSConfig
from smr_ssm.data.lra import LRA_TASKS, LRADataset, load_lra
from smr_ssm.data.nonuniform import SamplingTask, grid_task, observed_steps_task
from smr_ssm.data.wikitext import LMWindows, load_lm_tokens, perplexity
from smr_ssm.nss import build_regressor, evaluate, scale_step_correlation, summarise, train_regressor
from smr_ssm.trainer import StepSampler, Trainer, build_optimizer, local_batch_size

__all__ = [
    "build_conditions",
    "build_training_pool",
    "classification_accuracy",
    "parse_layer_spec",
    "read_init_weights",
    "run_bench",
    "run_lm",
    "run_lra",
    "run_nss",
    "time_layers",
]


def _prefix(d: dict[str, Any], p: str) -> dict[str, Any]:
    return {f"{p}{k}": v for k, v in d.items()}


def read_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Start weights for :func:`run_lm` / :func:`run_lra`, read without running code: a safetensors file,
    a ``save_pretrained`` folder (its ``model.safetensors``) or a checkpoint of this package's trainer
    (its ``model`` state). Anything else is a :class:`~papers_shared.errors.CheckpointError`."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if path.suffix == ".safetensors":
        return load_safetensors(path)[0]
    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(
            f"{path} holds no model weights (a {type(state).__name__}); give a safetensors file, a "
            "save_pretrained folder or a checkpoint written by smr-ssm"
        )
    return state


def _load_init(model: torch.nn.Module, state: dict[str, torch.Tensor] | None, path) -> None:
    """Load start weights; a tied parameter (e.g. the LM head) may be absent from the file."""
    if state is None:
        return
    params = dict(model.named_parameters(remove_duplicate=False))
    given = {id(params[k]) for k in state if k in params}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        detail = " ".join(str(exc).split("\n")[1:2]).strip()
        raise CheckpointError(
            f"{path} does not fit this model ({detail}); check model.* in the config"
        ) from None
    missing = [k for k in missing if not (k in params and id(params[k]) in given)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "check model.* in the config"
        )


def _write_results(out: Path, result: dict[str, Any]) -> None:
    if dist.is_main_process():
        write_json({k: v for k, v in result.items() if k != "history"}, out / "results.json")
    dist.barrier()


# --------------------------------------------------------------------------------------------- LM table
def run_lm(
    cfg: ExperimentConfig, resume: bool = False, progress: bool = True, init: str | Path | None = None
) -> dict[str, Any]:
    """Train a causal LM on WikiText-103 (or any HF text dataset); validation and test perplexity.
    ``init``: start weights (:func:`read_init_weights`; read first, before any data)."""
    from smr_ssm.models import SSMForCausalLM, smr_scale_stats

    lm, t = cfg.lm, cfg.train
    start = read_init_weights(init) if init is not None else None
    out = Path(cfg.out_dir)
    info = dist.init_distributed(t.device)
    splits = tuple(dict.fromkeys(("train", "validation", lm.eval_split)))
    with dist.main_process_first():  # rank 0 tokenises and fills the cache, the others read it
        tokens, vocab = load_lm_tokens(
            lm.dataset, lm.dataset_config, lm.tokenizer, splits, lm.data_dir, lm.cache_dir
        )
    seed_everything(t.seed)
    model = SSMForCausalLM(cfg.model.to_hf(vocab_size=vocab))
    _load_init(model, start, init)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    train = LMWindows(tokens["train"], lm.context, seed=t.seed)
    val = LMWindows(tokens["validation"], lm.context)
    test = LMWindows(tokens[lm.eval_split], lm.context)
    ebs = t.eval_batch_size or t.batch_size
    if lm.trainer == "hf":
        return _run_lm_hf(cfg, model, train, val, test, resume)
    device = info.device

    def eval_fn(m):
        metrics = _prefix(
            perplexity(m, val.eval_batches(ebs, lm.eval_stride, t.eval_batches), device), "val_"
        )
        probe = next(val.eval_batches(min(ebs, 4), max_batches=1))
        return {**metrics, **smr_scale_stats(m, input_ids=probe["input_ids"].to(device))}

    rank, world, b = dist.rank(), dist.world_size(), t.batch_size
    local_batch_size(b)  # the processes must divide the global batch

    def batch_fn(i):
        return train.batch(i, b, rank=rank, world=world)

    trainer = Trainer(model, t, batch_fn, eval_fn, out, progress)
    history = trainer.train(resume=resume)
    trainer.module.eval()
    test_ppl = perplexity(trainer.module, test.eval_batches(ebs, lm.eval_stride), device)
    result = {"history": history, **_prefix(test_ppl, f"{lm.eval_split}_")}
    _write_results(out, result)
    return result


class _WindowDataset(torch.utils.data.Dataset):
    """Random training windows for ``transformers.Trainer`` (item ``i`` is deterministic)."""

    def __init__(self, windows: LMWindows, length: int) -> None:
        self.windows, self.length = windows, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.windows.batch(i, 1)
        return {k: v[0] for k, v in b.items()}


def _run_lm_hf(
    cfg: ExperimentConfig, model, train: LMWindows, val: LMWindows, test: LMWindows, resume: bool
) -> dict[str, Any]:
    """The same run with ``transformers.Trainer`` (its own checkpoints, ``resume_from_checkpoint`` and
    its own distributed handling under torchrun/accelerate); the optimiser keeps the S4 parameter groups.
    ``train.batch_size`` is the global batch: each of the processes takes its share."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    t, lm = cfg.train, cfg.lm
    out = Path(cfg.out_dir)
    args = TrainingArguments(
        output_dir=str(out / "hf"),
        max_steps=t.max_steps,
        per_device_train_batch_size=local_batch_size(t.batch_size),
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        warmup_steps=int(round(t.warmup_frac * t.max_steps)),
        lr_scheduler_type="cosine" if t.schedule == "cosine" else t.schedule,
        max_grad_norm=t.grad_clip,
        logging_steps=t.log_every,
        save_steps=t.checkpoint_every or t.max_steps,
        save_total_limit=t.keep_checkpoints,
        seed=t.seed,
        bf16=t.bf16,
        use_cpu=dist.init_distributed(t.device).device.type == "cpu",
        report_to=[],
        disable_tqdm=not dist.is_main_process(),
    )
    optimizer = build_optimizer(model, t)
    trainer = HFTrainer(
        model=model,
        args=args,
        train_dataset=_WindowDataset(train, t.max_steps * t.batch_size * t.grad_accum),
        optimizers=(optimizer, None),
    )
    has_ckpt = any((out / "hf").glob("checkpoint-*")) if (out / "hf").is_dir() else False
    trainer.train(resume_from_checkpoint=True if (resume and has_ckpt) else None)
    if dist.is_main_process():
        model.save_pretrained(out / "final")
    device = next(model.parameters()).device
    ebs = t.eval_batch_size or t.batch_size
    model.eval()
    result = {
        **_prefix(perplexity(model, val.eval_batches(ebs, lm.eval_stride, t.eval_batches), device), "val_"),
        **_prefix(perplexity(model, test.eval_batches(ebs, lm.eval_stride), device), f"{lm.eval_split}_"),
        "history": trainer.state.log_history,
    }
    _write_results(out, result)
    return result


# -------------------------------------------------------------------------------------------- LRA table
@torch.no_grad()
def classification_accuracy(
    model, data: LRADataset, batch_size: int, device, max_batches: int | None = None
) -> dict[str, float]:
    """Accuracy and mean loss over ``data`` (the first ``max_batches`` batches); the batches are sharded
    over the processes (:func:`papers_shared.distributed.shard`) and the sums gathered, so every process
    returns the numbers of the whole set."""
    starts = list(range(0, len(data), batch_size))[:max_batches]
    correct, total, loss = 0, 0, 0.0
    for start in dist.shard(starts):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        total += len(idx)
        loss += out.loss.item() * len(idx)
    parts = dist.gather_objects((correct, total, loss))
    correct, total, loss = (sum(p[i] for p in parts) for i in range(3))
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1), "n": total}


def run_lra(
    cfg: ExperimentConfig, resume: bool = False, progress: bool = True, init: str | Path | None = None
) -> dict[str, Any]:
    """Train and evaluate one LRA task (validation accuracy during training, test accuracy at the end);
    ``init`` as in :func:`run_lm`."""
    from smr_ssm.models import SSMForSequenceClassification, smr_scale_stats

    lra, t = cfg.lra, cfg.train
    start = read_init_weights(init) if init is not None else None
    info = LRA_TASKS[lra.task]
    device = dist.init_distributed(t.device).device
    kw = dict(max_length=lra.max_length, val_fraction=lra.val_fraction, split_seed=lra.split_seed)
    with dist.main_process_first():  # rank 0 builds the cache, the others read it
        train, val, test = (load_lra(lra.task, lra.data_dir, s, **kw) for s in ("train", "val", "test"))
    seed_everything(t.seed)
    hf = cfg.model.to_hf(
        vocab_size=info["vocab_size"] or 1,
        encoder=info["encoder"],
        input_dim=1,
        num_labels=info["num_labels"],
        dual=info["dual"],
        pooling=lra.pooling,
    )
    model = SSMForSequenceClassification(hf)
    _load_init(model, start, init)
    out = Path(cfg.out_dir)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    sampler = StepSampler(len(train), t.batch_size, seed=t.seed)
    ebs = t.eval_batch_size or t.batch_size

    def eval_fn(m):
        metrics = _prefix(classification_accuracy(m, val, ebs, device, t.eval_batches), "val_")
        probe = {
            k: v.to(device) for k, v in val.batch(torch.arange(min(4, len(val)))).items() if k != "labels"
        }
        return {**metrics, **smr_scale_stats(m, **probe)}

    trainer = Trainer(model, t, lambda i: train.batch(sampler(i)), eval_fn, out, progress)
    history = trainer.train(resume=resume)
    trainer.module.eval()
    result = {
        "history": history,
        **_prefix(classification_accuracy(trainer.module, test, ebs, device), "test_"),
    }
    _write_results(out, result)
    return result


# ------------------------------------------------------------------------------------- sampling shift
def _signal_kw(nss: NSSConfig) -> dict[str, Any]:
    return dict(
        n_components=nss.n_components, freq_range=tuple(nss.freq_range), amp_range=tuple(nss.amp_range)
    )


def build_training_pool(nss: NSSConfig, seed: int) -> SamplingTask:
    """The training sequences of a seed (the training grid of the task)."""
    if nss.task == "uniform_grid":
        return grid_task(
            nss.n_train, nss.length, "uniform", nss.base_step, seed=1000 * seed + 7, **_signal_kw(nss)
        )
    return observed_steps_task(
        nss.n_train, nss.length, tuple(nss.train_steps), nss.base_step, nss.regimes, nss.horizon, nss.noise,
        seed=1000 * seed + 7, **_signal_kw(nss),
    )  # fmt: skip


def build_conditions(nss: NSSConfig, seed: int) -> dict[str, SamplingTask]:
    """Test sets of a seed, by condition.

    ``observed_steps``: ``train_range`` (the training distribution), ``slower``, ``faster`` (shifted
    step ranges). ``uniform_grid``: ``same`` (the training grid), ``step_<s>`` (uniform grid of step
    ``s``), ``jitter``.
    """
    base = 1000 * seed + 500
    kw = _signal_kw(nss)
    if nss.task == "uniform_grid":
        n, L, b = nss.n_test, nss.length, nss.base_step
        conds = {"same": grid_task(n, L, "uniform", b, seed=base, **kw)}
        for i, s in enumerate(nss.test_steps):
            conds[f"step_{s:g}"] = grid_task(n, L, "scaled", b, scale=s / b, seed=base + 1 + i, **kw)
        conds["jitter"] = grid_task(n, L, "jitter", b, jitter=nss.jitter, seed=base + 99, **kw)
        return conds
    ranges = {"train_range": nss.train_steps, "slower": nss.slower_steps, "faster": nss.faster_steps}
    return {
        name: observed_steps_task(
            nss.n_test,
            nss.length,
            tuple(r),
            nss.base_step,
            nss.regimes,
            nss.horizon,
            nss.noise,
            seed=base + i,
            **kw,
        )  # fmt: skip
        for i, (name, r) in enumerate(ranges.items())
    }


def run_nss(
    cfg: ExperimentConfig,
    progress: bool = False,
    log: Callable[[str], None] = print,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The sampling-shift experiment: per seed, every model of ``nss.models`` trained on the seed's pool
    and evaluated on every test condition, with the oracle floor, the hold-last-value predictor, SMR's
    scale-step correlation and the NSS indicator. Returns ``{"per_seed": [...], "summary": {...}}``.

    All models and data are built first, in order (results do not depend on scheduling); with
    ``nss.workers > 1`` the trainings then run in that many threads with one intra-op thread each, which
    uses small CPUs far better than one training with several intra-op threads (training consumes no
    random numbers, so results equal a sequential run's up to the reduction order of the intra-op thread
    count). Ctrl-C cancels the pending trainings and stops the running ones at their next batch. With
    ``out`` the record, its claims (:func:`smr_ssm.quick.nss_claims`) and the config go to ``<out>/nss.json``.
    """
    nss = cfg.nss
    input_dim = 2 if nss.task == "observed_steps" else 1
    jobs, seeds = [], []
    for seed in nss.seeds:
        pool = build_training_pool(nss, seed)
        seeds.append((seed, build_conditions(nss, seed)))
        for name in nss.models:
            model, with_steps = build_regressor(cfg.model, name, seed, input_dim, nss.steps_host)
            jobs.append((seed, name, model, with_steps, pool))
    stop = threading.Event()

    def work(job):
        seed, _, model, with_steps, pool = job
        return train_regressor(
            model, cfg.train, seed, pool, with_steps, progress and nss.workers <= 1, should_stop=stop.is_set
        )

    threads = torch.get_num_threads()
    log(
        f"[nss] training {len(jobs)} models ({len(nss.seeds)} seeds x {nss.models}) in {nss.workers} thread(s)"
    )
    # generated data are finite: skip the per-layer NaN/inf reductions (a process-wide switch, set here once)
    with validation(False):
        try:
            if nss.workers > 1:
                torch.set_num_threads(1)
                executor = ThreadPoolExecutor(max_workers=nss.workers)
                try:
                    histories = list(executor.map(work, jobs))
                except BaseException:
                    stop.set()  # running trainings stop at their next batch; queued ones never start
                    executor.shutdown(wait=False, cancel_futures=True)
                    raise
                executor.shutdown(wait=True)
            else:
                histories = [work(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    all_steps = torch.cat([t.steps.flatten() for _, conds in seeds for t in conds.values()])
    edges = torch.linspace(float(all_steps.min()), float(all_steps.max()), 13)  # common bins for every seed
    per_seed = []
    for seed, conditions in seeds:
        record: dict[str, Any] = {
            "seed": seed,
            "floor": {c: t.floor for c, t in conditions.items()},
            "hold": {c: t.hold for c, t in conditions.items()},
        }
        for (s, name, model, with_steps, _), history in zip(jobs, histories):
            if s != seed:
                continue
            ev = evaluate(model, conditions, with_steps, nss.norm_sequences)
            first = next(iter(ev))
            record[name] = {
                "eval": ev,
                "final_train_loss": history[-1]["loss"] if history else float("nan"),
                "degradation": {c: v["mse"] / ev[first]["mse"] for c, v in ev.items() if c != first},
            }
            if name in ("smr", "smr_steps") and cfg.model.smr is not None:
                record[name]["scale_step"] = scale_step_correlation(model, conditions, edges)
            log(f"[nss] seed {seed} {name}: " + ", ".join(f"{c}={v['mse']:.4g}" for c, v in ev.items()))
        per_seed.append(record)
    res = {"per_seed": per_seed, "summary": summarise(per_seed, list(nss.models))}
    if out is not None:
        from smr_ssm.quick import nss_claims

        res["claims"] = [dataclasses.asdict(c) for c in nss_claims(cfg, res)]
        log(f"[nss] wrote {write_json({**res, 'config': config_to_dict(cfg)}, Path(out) / 'nss.json')}")
    return res


# ----------------------------------------------------------------------------------------- benchmark
def parse_layer_spec(spec: str) -> tuple[str, Any]:
    """``"s4d"`` -> ``("s4d", None)``; ``"s4d+smr"`` -> the default SMR; ``"s4d+smr:literal"`` -> a preset.
    Unknown layer types or presets raise ``ValueError``."""
    from smr_ssm.layers import LAYER_TYPES
    from smr_ssm.smr import SMR_PRESETS

    layer, plus, rest = spec.partition("+smr")
    if layer not in LAYER_TYPES or (plus and rest and not rest.startswith(":")):
        raise ValueError(
            f"bad layer spec {spec!r}: use <type>[+smr[:<preset>]] with type in {sorted(LAYER_TYPES)}"
        )
    if not plus:
        return layer, None
    preset = rest[1:] if rest else "default"
    if preset not in SMR_PRESETS:
        raise ValueError(
            f"bad layer spec {spec!r}: unknown SMR preset {preset!r}; valid: {sorted(SMR_PRESETS)}"
        )
    return layer, preset


def time_layers(layers: dict[str, Any], u: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of forward + backward of each layer on ``u``; the layers are timed interleaved
    (one repeat of each in turn), so machine-load drifts hit every variant alike."""
    x = u.clone().requires_grad_()

    def run(layer):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    for _ in range(warmup):
        for layer in layers.values():
            run(layer)
    times: dict[str, list[float]] = {k: [] for k in layers}
    for _ in range(repeats):
        for k, layer in layers.items():
            t0 = time.perf_counter()
            run(layer)
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def run_bench(
    cfg: ExperimentConfig, out: str | Path | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Forward + backward time of each layer spec at each length; ratios to the spec of the same host
    without ``+smr`` (timed interleaved, repeat by repeat). Writes ``<out>/bench.json`` when ``out`` is
    given; ``log`` gets one line per row."""
    from smr_ssm.layers import build_layer

    b = cfg.bench
    seed_everything(0)
    rows = []
    for L in b.lengths:
        u = torch.randn(b.batch_size, L, b.d_model)
        layers = {}
        for spec in b.layers:
            name, smr = parse_layer_spec(spec)
            kw = {"d_state": b.d_state} if name not in ("mega", "mega_ema") else {}
            seed_everything(0)
            layers[spec] = build_layer(name, b.d_model, smr=smr, **kw)
        times = time_layers(layers, u, b.repeats, b.warmup)
        for spec, t in times.items():
            ref = times.get(parse_layer_spec(spec)[0])
            rows.append(
                {
                    "layer": spec,
                    "L": L,
                    "ms": 1000 * t,
                    "ratio_to_baseline": (t / ref) if ref else None,
                    "tokens_per_s": b.batch_size * L / t,
                }
            )
    for r in rows if log else []:
        ratio = f"{r['ratio_to_baseline']:.3f}x" if r["ratio_to_baseline"] else "-"
        log(f"{r['layer']:>16}  L={r['L']:>6}  {r['ms']:9.2f} ms  {ratio:>8}  {r['tokens_per_s']:.0f} tok/s")
    result = {"config": config_to_dict(b), "rows": rows, "torch_threads": torch.get_num_threads()}
    if out is not None:
        write_json(result, Path(out) / "bench.json")
    return result
