"""Paper-scale drivers (spec §5): WikiText-103 language modelling (R2) and the LRA tasks (R1), each for
a host with or without SMR on the same trainer, plus the training-speed microbenchmark (R3)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from papers_shared.checkpoints import atomic_write_text
from papers_shared.config import config_to_dict, save_config
from papers_shared.device import get_device, seed_everything
from smr_ssm.config import BenchConfig, LMConfig, LRAConfig
from smr_ssm.data.lra import LRA_TASKS, LRADataset, load_lra
from smr_ssm.data.wikitext import LMWindows, load_lm_tokens, perplexity
from smr_ssm.trainer import StepSampler, Trainer, build_optimizer

__all__ = ["classification_accuracy", "parse_layer_spec", "run_bench", "run_lm", "run_lra", "time_layers"]


def _prefix(d: dict[str, Any], p: str) -> dict[str, Any]:
    return {f"{p}{k}": v for k, v in d.items()}


def run_lm(cfg: LMConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a causal LM on WikiText-103 (or any HF text dataset) and report validation/test perplexity."""
    from smr_ssm.models import SSMForCausalLM, smr_scale_stats

    if cfg.trainer not in ("package", "hf"):
        raise ValueError(f"trainer must be 'package' or 'hf', got {cfg.trainer!r}")
    out = Path(cfg.out_dir)
    splits = tuple(dict.fromkeys(("train", "validation", cfg.eval_split)))
    tokens, vocab = load_lm_tokens(
        cfg.dataset, cfg.dataset_config, cfg.tokenizer, splits, cfg.data_dir, cfg.cache_dir
    )
    seed_everything(cfg.train.seed)
    model = SSMForCausalLM(cfg.model.to_hf(vocab_size=vocab))
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    train = LMWindows(tokens["train"], cfg.context, seed=cfg.train.seed)
    val = LMWindows(tokens["validation"], cfg.context)
    test = LMWindows(tokens[cfg.eval_split], cfg.context)
    ebs = cfg.train.eval_batch_size or cfg.train.batch_size
    device = get_device(cfg.train.device)
    if cfg.trainer == "hf":
        return _run_lm_hf(cfg, model, train, val, test, resume)

    def eval_fn(m):
        metrics = _prefix(
            perplexity(m, val.eval_batches(ebs, cfg.eval_stride, cfg.train.eval_batches), device), "val_"
        )
        probe = next(val.eval_batches(min(ebs, 4), max_batches=1))
        return {**metrics, **smr_scale_stats(m, input_ids=probe["input_ids"].to(device))}

    trainer = Trainer(
        model, cfg.train, lambda i: train.batch(i, cfg.train.batch_size), eval_fn, out, progress
    )
    history = trainer.train(resume=resume)
    trainer.model.eval()
    result = {
        "history": history,
        **_prefix(
            perplexity(trainer.model, test.eval_batches(ebs, cfg.eval_stride), device), f"{cfg.eval_split}_"
        ),
    }
    atomic_write_text(
        out / "results.json", json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2) + "\n"
    )
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
    cfg: LMConfig, model, train: LMWindows, val: LMWindows, test: LMWindows, resume: bool
) -> dict[str, Any]:
    """The same run with ``transformers.Trainer`` (its own checkpoints and ``resume_from_checkpoint``);
    the optimiser keeps the S4 parameter groups of spec §3.7."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    t = cfg.train
    out = Path(cfg.out_dir)
    args = TrainingArguments(
        output_dir=str(out / "hf"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
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
        use_cpu=get_device(t.device).type == "cpu",
        report_to=[],
        disable_tqdm=False,
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
    model.save_pretrained(out / "final")
    device = next(model.parameters()).device
    ebs = t.eval_batch_size or t.batch_size
    model.eval()
    result = {
        **_prefix(perplexity(model, val.eval_batches(ebs, cfg.eval_stride, t.eval_batches), device), "val_"),
        **_prefix(perplexity(model, test.eval_batches(ebs, cfg.eval_stride), device), f"{cfg.eval_split}_"),
        "history": trainer.state.log_history,
    }
    atomic_write_text(
        out / "results.json", json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2) + "\n"
    )
    return result


@torch.no_grad()
def classification_accuracy(
    model, data: LRADataset, batch_size: int, device, max_batches: int | None = None
) -> dict[str, float]:
    correct, total, loss = 0, 0, 0.0
    for n, start in enumerate(range(0, len(data), batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        idx = torch.arange(start, min(start + batch_size, len(data)))
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        total += len(idx)
        loss += out.loss.item() * len(idx)
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1), "n": total}


def run_lra(cfg: LRAConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one LRA task (validation accuracy during training, test accuracy at the end)."""
    from smr_ssm.models import SSMForSequenceClassification, smr_scale_stats

    if cfg.task not in LRA_TASKS:
        raise ValueError(f"unknown LRA task {cfg.task!r}; valid: {sorted(LRA_TASKS)}")
    info = LRA_TASKS[cfg.task]
    kw = dict(max_length=cfg.max_length, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    train, val, test = (load_lra(cfg.task, cfg.data_dir, s, **kw) for s in ("train", "val", "test"))
    seed_everything(cfg.train.seed)
    hf = cfg.model.to_hf(
        vocab_size=info["vocab_size"] or 1,
        encoder=info["encoder"],
        input_dim=1,
        num_labels=info["num_labels"],
        dual=info["dual"],
        pooling=cfg.pooling,
    )
    model = SSMForSequenceClassification(hf)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    sampler = StepSampler(len(train), cfg.train.batch_size, seed=cfg.train.seed)
    device = get_device(cfg.train.device)
    ebs = cfg.train.eval_batch_size or cfg.train.batch_size

    def eval_fn(m):
        metrics = _prefix(classification_accuracy(m, val, ebs, device, cfg.train.eval_batches), "val_")
        probe = {
            k: v.to(device) for k, v in val.batch(torch.arange(min(4, len(val)))).items() if k != "labels"
        }
        return {**metrics, **smr_scale_stats(m, **probe)}

    trainer = Trainer(model, cfg.train, lambda i: train.batch(sampler(i)), eval_fn, out, progress)
    history = trainer.train(resume=resume)
    trainer.model.eval()
    result = {
        "history": history,
        **_prefix(classification_accuracy(trainer.model, test, ebs, device), "test_"),
    }
    atomic_write_text(
        out / "results.json", json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2) + "\n"
    )
    return result


def parse_layer_spec(spec: str) -> tuple[str, Any]:
    """``"s4d"`` -> ``("s4d", None)``; ``"s4d+smr"`` -> default SMR; ``"s4d+smr:literal"`` -> a preset."""
    if "+smr" not in spec:
        return spec, None
    layer, _, rest = spec.partition("+smr")
    preset = rest[1:] if rest.startswith(":") else "default"
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


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Forward+backward time of each layer spec at each length (spec §5 R3); ratios to the first spec
    of the same host without ``+smr``. Layer variants are timed interleaved, repeat by repeat."""
    from smr_ssm.layers import build_layer

    seed_everything(0)
    rows = []
    for L in cfg.lengths:
        u = torch.randn(cfg.batch_size, L, cfg.d_model)
        layers = {}
        for spec in cfg.layers:
            name, smr = parse_layer_spec(spec)
            kw = {"d_state": cfg.d_state} if name not in ("mega", "mega_ema") else {}
            seed_everything(0)
            layers[spec] = build_layer(name, cfg.d_model, smr=smr, **kw)
        times = time_layers(layers, u, cfg.repeats, cfg.warmup)
        for spec, t in times.items():
            base = parse_layer_spec(spec)[0]
            ref = times.get(base)
            rows.append(
                {
                    "layer": spec,
                    "L": L,
                    "ms": 1000 * t,
                    "ratio_to_baseline": (t / ref) if ref else None,
                    "tokens_per_s": cfg.batch_size * L / t,
                }
            )
    result = {"config": config_to_dict(replace(cfg)), "rows": rows, "torch_threads": torch.get_num_threads()}
    if cfg.out:
        atomic_write_text(cfg.out, json.dumps(result, indent=2) + "\n")
    return result
