"""Experiment driver behind the CLI: in-domain (OFS-DPO vs DPO + ablations) and cross-domain (COFS-DPO vs the
continual baselines) from an :class:`~ofs_dpo.config.ExperimentConfig` (ours: score matrix metrics as in continual-learning papers).

Every method of one experiment shares the model, LoRA config, data, ``OFSDPOConfig`` and evaluation. Results go to
``<output_dir>/<name>/results.json`` (atomic); continual runs save the runner state after every domain and resume
from it (``resume=True``), and trl checkpoints inside a domain are resumed when present.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ofs_dpo.cofs import ContinualRunner
from ofs_dpo.config import ExperimentConfig, OFSDPOConfig
from ofs_dpo.data import (
    TOY_KINDS,
    build_sentiment_pairs,
    imdb_prompts,
    load_preference_domain,
    tiny_gpt2,
    toy_domains,
    toy_tokenizer,
)
from papers_shared.results import write_json

__all__ = [
    "IN_DOMAIN_OVERRIDES",
    "build_model_and_tokenizer",
    "load_domains",
    "lora_config_from",
    "evaluate_adapter",
    "make_args",
    "run_experiment",
]

#: In-domain methods → (continual runner method, OFSDPOConfig overrides) (ablations, ours).
IN_DOMAIN_OVERRIDES: dict[str, tuple[str, dict[str, Any]]] = {
    "dpo": ("seq_dpo", {}),
    "ofs": ("seq_ofs", {}),
    "ofs_alpha0": ("seq_ofs", {"chase_alpha": 0.0}),
    "ofs_noswap": ("seq_ofs", {"swap_mode": "none"}),
    "ofs_ratio1": ("seq_ofs", {"slow_lr_ratio": 1.0}),
}


def build_model_and_tokenizer(cfg: ExperimentConfig, seed: int) -> tuple[torch.nn.Module, Any]:
    """``"tiny-gpt2"``: a random GPT2Config model and the in-memory toy tokenizer; otherwise a hub id/folder."""
    m = cfg.model
    if m.name_or_path == "tiny-gpt2":
        tok = toy_tokenizer(cfg.data.toy_vocab)
        model = tiny_gpt2(len(tok), m.n_layer, m.n_head, m.n_embd, m.n_positions, seed=seed)
        return model, tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papers_shared.data.hf import require_hub_model

    name = m.name_or_path
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser())
    elif looks_local:
        raise FileNotFoundError(f"model.name_or_path={name}: no such model folder; give a folder or a hub id")
    else:
        path = require_hub_model(name)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, m.dtype))
    return model, tok


def lora_config_from(cfg: ExperimentConfig):
    """``peft.LoraConfig`` of the experiment (PEFT's per-architecture q/v default when no targets are given)."""
    from peft import LoraConfig

    lc = cfg.lora
    return LoraConfig(
        r=lc.r,
        lora_alpha=lc.lora_alpha,
        lora_dropout=lc.lora_dropout,
        target_modules=lc.target_modules,
        use_rslora=lc.use_rslora,
        task_type="CAUSAL_LM",
    )


def make_args(cfg: ExperimentConfig, output_dir: str | Path, seed: int, **overrides: Any) -> OFSDPOConfig:
    """``OFSDPOConfig`` from ``cfg.train`` (validated :class:`~ofs_dpo.config.TrainSettings`) and ``overrides``."""
    kwargs = {
        "report_to": [],
        **cfg.train.to_kwargs(),
        **overrides,
        "output_dir": str(output_dir),
        "seed": seed,
    }
    return OFSDPOConfig(**kwargs)


def load_domains(
    cfg: ExperimentConfig, tokenizer: Any, model: torch.nn.Module
) -> dict[str, dict[str, Dataset]]:
    """``{domain: {"train": Dataset, "test": Dataset}}`` for the configured domains (toy or hub)."""
    d = cfg.data
    out: dict[str, dict[str, Dataset]] = {}
    toy = [n for n in d.domains if n in TOY_KINDS]
    if toy:
        out.update(
            toy_domains(
                toy,
                n_train=d.n_train or 1024,
                n_eval=d.n_eval or 256,
                vocab_size=d.toy_vocab,
                prompt_len=d.toy_prompt_len,
                completion_len=d.toy_completion_len,
                seed=d.data_seed,
            )
        )
    for name in d.domains:
        if name in out:
            continue
        if name == "imdb":
            out[name] = _imdb_domain(cfg, tokenizer, model)
            continue
        out[name] = {
            "train": load_preference_domain(name, "train", d.n_train, d.cache_dir),
            "test": load_preference_domain(name, d.eval_split, d.n_eval, d.cache_dir),
        }
    return out


def _imdb_domain(cfg: ExperimentConfig, tokenizer: Any, model: torch.nn.Module) -> dict[str, Dataset]:
    from ofs_dpo.evaluation import SequenceClassifierReward

    if not cfg.eval.sentiment_model:
        raise ValueError(
            "the imdb domain needs eval.sentiment_model (e.g. lvwerra/distilbert-imdb) to label pairs"
        )
    device = next(model.parameters()).device
    reward = SequenceClassifierReward(
        cfg.eval.sentiment_model, device=device, pair_input=False, label_index=1
    )
    d = cfg.data
    splits = {}
    for split, n in (("train", d.n_train), ("test", d.n_eval)):
        prompts = imdb_prompts(split, n, seed=d.data_seed, cache_dir=d.cache_dir)
        splits[split] = build_sentiment_pairs(
            model,
            tokenizer,
            prompts,
            reward,
            d.imdb_pairs_per_prompt,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
        )
    return splits


def _metric_fns(cfg: ExperimentConfig, device: torch.device) -> dict[str, Callable[..., float]]:
    """Generation metrics (ours, the DPO paper's task family): win rate vs dataset ``chosen`` (reward model) and IMDb sentiment reward."""
    from ofs_dpo.evaluation import SequenceClassifierReward, sample_reward, win_rate_vs_reference

    e = cfg.eval
    fns: dict[str, Callable[..., float]] = {}
    if e.win_rate:
        if not e.reward_model:
            raise ValueError(
                "eval.win_rate needs eval.reward_model (e.g. OpenAssistant/reward-model-deberta-v3-large-v2)"
            )
        rm = SequenceClassifierReward(e.reward_model, device=device, batch_size=e.batch_size)

        def win(pm, tok, domain, ds):
            if ds is None or domain == "imdb":
                return math.nan
            sub = ds.select(range(min(e.n_generate, len(ds))))
            return win_rate_vs_reference(
                pm,
                tok,
                sub["prompt"],
                sub["chosen"],
                rm,
                max_new_tokens=e.max_new_tokens,
                batch_size=e.batch_size,
            )

        fns["win_rate"] = win
    if e.sentiment_model and "imdb" in cfg.data.domains:
        clf = SequenceClassifierReward(e.sentiment_model, device=device, pair_input=False, label_index=1)

        def sentiment(pm, tok, domain, ds):
            if domain != "imdb" or ds is None:
                return math.nan
            prompts = list(ds["prompt"][: e.n_generate])
            return sample_reward(
                pm, tok, prompts, clf, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size
            )

        fns["sentiment_reward"] = sentiment
    return fns


def _run_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def run_experiment(
    cfg: ExperimentConfig, resume: bool = False, progress: bool = True, runner_hook: Callable | None = None
) -> dict[str, Any]:
    """Run every (seed, method) of ``cfg`` and write ``results.json``; returns the results dict.

    ``runner_hook(runner)`` (optional) is called on each :class:`ContinualRunner` before training, e.g. to add
    callbacks. In-domain runs train the first configured domain; cross-domain runs train all domains in order.
    """
    from tqdm.auto import tqdm
    from transformers.trainer_utils import get_last_checkpoint

    from papers_shared.config import save_config

    jobs = [(seed, method) for seed in cfg.seeds for method in cfg.methods]
    # The first job's model and data are loaded before the progress bar and the run folder, so that a missing
    # model or dataset is reported as one line on a clean terminal and leaves nothing behind.
    model, tok = build_model_and_tokenizer(cfg, jobs[0][0])
    first = (model, tok, load_domains(cfg, tok, model))
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    results: dict[str, Any] = {"name": cfg.name, "setting": cfg.setting, "runs": {}}
    domains_order = cfg.data.domains[:1] if cfg.setting == "in_domain" else list(cfg.data.domains)
    for seed, method in tqdm(jobs, desc=cfg.name, disable=not progress):
        if first is not None:
            (model, tok, data), first = first, None
        else:
            model, tok = build_model_and_tokenizer(cfg, seed)
            data = load_domains(cfg, tok, model)
        job_dir = run_dir / f"seed{seed}" / method
        if cfg.setting == "in_domain":
            runner_method, overrides = IN_DOMAIN_OVERRIDES[method]
        else:
            runner_method, overrides = method, {}
        args = make_args(cfg, job_dir, seed, **overrides)
        c = cfg.continual
        probe = data[domains_order[0]]["test"].select(range(min(64, len(data[domains_order[0]]["test"]))))
        device = next(model.parameters()).device
        runner = ContinualRunner(
            model,
            tok,
            lora_config_from(cfg),
            args,
            method=runner_method,
            weights=c.weights,
            lam=c.lam,
            combine_space=c.combine_space,
            init_from=c.init_from,
            search_step=c.search_step,
            validation_sets={d: data[d]["test"] for d in domains_order} if c.weights == "search" else None,
            merge_type=c.merge_type,
            merge_density=c.merge_density,
            eval_batch_size=cfg.eval.batch_size,
            metric_fns=_metric_fns(cfg, device),
            probe_dataset=probe if cfg.probe_every > 0 else None,
            probe_every=cfg.probe_every,
            quiet=not progress,
        )
        if runner_hook is not None:
            runner_hook(runner)
        state_path = job_dir / "runner.pt"
        if resume and state_path.is_file():
            runner.load(state_path)
        evals = {d: data[d]["test"] for d in domains_order}
        for k, name in enumerate(domains_order):
            if name in runner.domains:
                continue
            domain_dir = Path(args.output_dir) / f"{k:02d}-{name}-{runner_method}"
            ckpt = get_last_checkpoint(str(domain_dir)) if resume and domain_dir.is_dir() else None
            runner.fit_domain(name, data[name]["train"], evals, resume_from_checkpoint=ckpt)
            runner.save(state_path)
        summary = runner.summary()
        summary["results"] = [
            {"domain": r.domain, "scores": r.scores, "weights": r.weights, "extra": r.extra, "probe": r.probe}
            for r in runner.results
        ]
        results["runs"].setdefault(method, {})[str(seed)] = summary
    results["aggregate"] = _aggregate(results["runs"], cfg.setting)
    write_json(results, run_dir / "results.json")
    return results


def _aggregate(runs: dict[str, dict[str, Any]], setting: str) -> dict[str, Any]:
    """Mean and std over seeds of the headline metrics (accuracy in-domain; final avg / forgetting cross-domain)."""
    agg: dict[str, Any] = {}
    for method, by_seed in runs.items():
        vals: dict[str, list[float]] = {}
        for s in by_seed.values():
            if setting == "in_domain":
                vals.setdefault("reward_accuracy", []).append(s["matrix"][0][0])
            else:
                for key in ("final_avg", "forgetting"):
                    if key in s:
                        vals.setdefault(key, []).append(s[key])
            for r in s.get("results", [])[-1:]:
                for key, v in r["extra"].items():
                    vals.setdefault(key, []).append(v)
        agg[method] = {
            k: {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "n": len(v)}
            for k, v in vals.items()
            if v and not all(x is None or (isinstance(x, float) and math.isnan(x)) for x in v)
        }
    return agg


def evaluate_adapter(cfg: ExperimentConfig, adapter: str | Path) -> dict[str, Any]:
    """Score a saved adapter folder on every configured domain's held-out split; writes ``eval.json``.

    The folder is read with :func:`~ofs_dpo.adapters.read_adapter_folder` (safetensors, never unpickled), so a
    damaged or crafted file is a one-line :class:`~papers_shared.errors.CheckpointError`.
    """
    from peft import get_peft_model

    from ofs_dpo.adapters import load_adapter_state_dict, read_adapter_folder
    from ofs_dpo.evaluation import implicit_reward_accuracy

    lora, state = read_adapter_folder(adapter)
    model, tok = build_model_and_tokenizer(cfg, cfg.seeds[0])
    data = load_domains(cfg, tok, model)
    pm = get_peft_model(model, lora)
    try:
        load_adapter_state_dict(pm, "default", state)
    except ValueError as exc:
        from papers_shared.errors import CheckpointError

        raise CheckpointError(
            f"adapter {adapter} does not fit model {cfg.model.name_or_path}: {exc}"
        ) from None
    out: dict[str, Any] = {}
    metric_fns = _metric_fns(cfg, next(pm.parameters()).device)
    for name, splits in data.items():
        out[name] = {
            "reward_accuracy": implicit_reward_accuracy(pm, splits["test"], tok, "default", cfg.train.beta)
        }
        for metric, fn in metric_fns.items():
            out[name][metric] = fn(pm, tok, name, splits["test"])
    write_json(out, _run_dir(cfg) / "eval.json")
    return out
