"""Non-stable-state (NSS) diagnostics and the sampling-shift experiment (spec §3.2, §3.7, §8).

Train on one sampling grid, evaluate on (a) the same grid, (b) uniformly faster/slower grids and (c) a
jittered non-uniform grid; report the error per condition, the degradation ratio
``MSE_(b|c) / MSE_(a)`` and the NSS indicator ``max_k ||x_k|| / median_k ||x_k||`` of the first
block's hidden state. The models never see the sampling times (spec §3.3): SMR has to infer the
effective step from the input history.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from papers_shared.device import seed_everything
from papers_shared.ssm.modules import validation
from smr_ssm.blocks import build_blocks, host_kwargs
from smr_ssm.config import NSSConfig, TrainConfig
from smr_ssm.data.nonuniform import regression_batch, sample_signals

__all__ = [
    "RegressionOutput",
    "SSMRegressor",
    "build_conditions",
    "nss_ratio",
    "run_nss",
    "sampling_shift_eval",
    "state_norms",
    "build_nss_model",
    "train_nss_model",
]


@dataclass
class RegressionOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class SSMRegressor(nn.Module):
    """Per-position regressor for the NSS experiment: ``Linear(1, d)`` -> SSM blocks -> norm ->
    ``Linear(d, 1)``, MSE loss. Same blocks as :class:`~smr_ssm.models.SSMForSequenceRegression`, without
    the transformers wrapper (so the quick reproduction does not import transformers)."""

    def __init__(
        self,
        d_model: int,
        n_layer: int,
        layer_type: str = "s4d",
        d_state: int | None = None,
        smr: Any = "default",
    ) -> None:
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.layers = build_blocks(n_layer, d_model, layer_type, host_kwargs(layer_type, d_state), smr=smr)
        self.norm_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)

    def embed(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_values)

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> RegressionOutput:
        x = self.embed(input_values)
        for layer in self.layers:
            x = layer(x, timesteps)
        pred = self.head(self.norm_f(x))
        loss = None if labels is None else torch.nn.functional.mse_loss(pred, labels)
        return RegressionOutput(loss, pred)


def state_norms(layer: nn.Module, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden-state norm ``||x_k||`` per position ``(B, L)`` of a host (anything with ``states``) or of an
    :class:`~smr_ssm.blocks.SSMBlock` (its input normalisation applied first, as in its forward)."""
    from smr_ssm.blocks import SSMBlock

    if isinstance(layer, SSMBlock):
        u = layer.norm(u) if layer.prenorm else u
        layer = layer.mixer
    if not hasattr(layer, "states"):
        raise TypeError(
            f"{type(layer).__name__} exposes no hidden states (hosts with .states: S4D, S5, MegaEMA)"
        )
    x = layer.states(u, timesteps)
    return x.abs().pow(2).flatten(2).sum(-1).sqrt()


def nss_ratio(norms: torch.Tensor) -> torch.Tensor:
    """``max_k ||x_k|| / median_k ||x_k||`` per sequence (spec §8 NSS indicator)."""
    return norms.max(dim=1).values / norms.median(dim=1).values.clamp_min(1e-12)


def build_conditions(cfg: NSSConfig, n: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Test signals per condition: ``same`` (training grid), ``step_<s>`` (uniform grid of step ``s``),
    ``jitter`` (``Delta_k ~ base_step * U[1 - jitter, 1 + jitter]``). Each has ``L + 1`` samples."""
    common = dict(
        base_step=cfg.base_step,
        n_components=cfg.n_components,
        freq_range=tuple(cfg.freq_range),
        amp_range=tuple(cfg.amp_range),
    )
    conds = {"same": sample_signals(n, cfg.length + 1, "uniform", seed=seed, **common)}
    for i, s in enumerate(cfg.test_steps):
        conds[f"step_{s:g}"] = sample_signals(
            n, cfg.length + 1, "scaled", scale=s / cfg.base_step, seed=seed + 1 + i, **common
        )
    conds["jitter"] = sample_signals(n, cfg.length + 1, "jitter", jitter=cfg.jitter, seed=seed + 99, **common)
    return conds


@torch.no_grad()
def sampling_shift_eval(
    model: nn.Module,
    conditions: dict[str, tuple[torch.Tensor, torch.Tensor]],
    base_step: float,
    norm_sequences: int | None = 32,
    with_timesteps: bool = False,
) -> dict[str, dict[str, float]]:
    """MSE per condition for a regression model, and the NSS indicator of its first block on the first
    ``norm_sequences`` sequences (``None``: all; ``0``: skipped). ``with_timesteps`` passes the true
    relative steps to the model (the oracle of spec §4)."""
    model.eval()
    out = {}
    for name, (values, times) in conditions.items():
        batch = regression_batch(values, times, base_step, with_timesteps=with_timesteps)
        ts = batch.get("timesteps")
        pred = model(input_values=batch["input_values"], timesteps=ts).logits
        res = {"mse": torch.mean((pred - batch["labels"]) ** 2).item()}
        if norm_sequences != 0:
            h = model.embed(input_values=batch["input_values"][:norm_sequences])
            ts_n = None if ts is None else ts[:norm_sequences]
            res["state_norm_ratio"] = nss_ratio(state_norms(model.layers[0], h, ts_n)).mean().item()
        out[name] = res
    return out


def repeat_last_mse(conditions: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """The "repeat the last value" predictor ``u_{k+1} = u_k`` per condition."""
    return {k: torch.mean((v[:, 1:] - v[:, :-1]) ** 2).item() for k, (v, _) in conditions.items()}


def build_nss_model(cfg: NSSConfig, smr: Any, seed: int, init_from: nn.Module | None = None) -> SSMRegressor:
    """A regressor (the baseline when ``smr`` is ``None``); ``init_from`` copies the shared parameters so
    that the two models of a seed differ only by SMR."""
    seed_everything(seed)
    model = SSMRegressor(cfg.d_model, cfg.n_layer, cfg.layer_type, cfg.d_state, smr)
    if init_from is not None:
        model.load_state_dict(init_from.state_dict(), strict=False)
    return model


def train_nss_model(
    cfg: NSSConfig,
    model: nn.Module,
    seed: int,
    train_values: torch.Tensor,
    progress: bool = False,
    train_times: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Train a regressor on the training pool (one-step-ahead MSE; AdamW, spec §8 settings). With
    ``cfg.oracle_timesteps`` the batches carry the true relative steps (``train_times`` needed)."""
    from smr_ssm.trainer import StepSampler, Trainer

    if cfg.oracle_timesteps and train_times is None:
        raise ValueError("oracle_timesteps=True needs the sampling times of the training pool (train_times)")
    sampler = StepSampler(train_values.shape[0], cfg.batch_size, seed=seed)

    def batch_fn(i: int) -> dict[str, torch.Tensor]:
        idx = sampler(i)
        times = train_times[idx] if cfg.oracle_timesteps else None
        return regression_batch(train_values[idx], times, cfg.base_step, with_timesteps=cfg.oracle_timesteps)

    tcfg = TrainConfig(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.steps,
        batch_size=cfg.batch_size,
        warmup_frac=0.0,
        log_every=max(1, cfg.steps // 5),
        eval_every=0,
        checkpoint_every=0,
        seed=seed,
        device="cpu",
    )
    trainer = Trainer(model, tcfg, batch_fn, out_dir=None, progress=progress)
    return trainer.train()


def run_nss(cfg: NSSConfig, progress: bool = False, log=print) -> dict[str, Any]:
    """The full experiment: per seed, a baseline and an SMR model with identical shared initialisation,
    both evaluated on every sampling condition. Returns per-seed numbers and seed means.

    All models and data are built first (in order, so results do not depend on scheduling); with
    ``cfg.workers > 1`` the trainings then run in that many threads with one intra-op thread each,
    which uses small CPUs far better than one training with several intra-op threads (the models
    are tiny; training consumes no random numbers, so results equal a sequential run's up to the
    floating-point reduction order of the intra-op thread count).
    """
    jobs, seeds = [], []
    for seed in cfg.seeds:
        common = dict(
            base_step=cfg.base_step,
            n_components=cfg.n_components,
            freq_range=tuple(cfg.freq_range),
            amp_range=tuple(cfg.amp_range),
        )
        train_values, train_times = sample_signals(
            cfg.n_train, cfg.length + 1, "uniform", seed=1000 * seed + 7, **common
        )
        conditions = build_conditions(cfg, cfg.n_test, seed=1000 * seed + 500)
        init = build_nss_model(cfg, None, seed)
        seeds.append((seed, conditions))
        for label, smr in (("baseline", None), ("smr", cfg.smr)):
            model = build_nss_model(cfg, smr, seed, init_from=init)
            jobs.append((seed, label, model, (train_values, train_times)))

    def work(job):
        seed, label, model, (values, times) = job
        return train_nss_model(
            cfg, model, seed, values, progress=progress and cfg.workers <= 1, train_times=times
        )

    threads = torch.get_num_threads()
    # the data are generated and finite: skip the per-layer NaN/inf reductions (set once, here, since
    # the switch is process-wide and the worker threads share it)
    with validation(False):
        try:
            if cfg.workers > 1:
                torch.set_num_threads(1)
                with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
                    histories = list(pool.map(work, jobs))
            else:
                histories = [work(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    per_seed = []
    for seed, conditions in seeds:
        record: dict[str, Any] = {"seed": seed, "repeat_last": repeat_last_mse(conditions)}
        for (s, label, model, _), history in zip(jobs, histories):
            if s != seed:
                continue
            ev = sampling_shift_eval(
                model, conditions, cfg.base_step, cfg.norm_sequences, with_timesteps=cfg.oracle_timesteps
            )
            record[label] = {
                "eval": ev,
                "final_train_loss": history[-1]["loss"] if history else float("nan"),
                "degradation": {k: v["mse"] / ev["same"]["mse"] for k, v in ev.items() if k != "same"},
            }
            log(f"[nss] seed {seed} {label}: " + ", ".join(f"{k}={v['mse']:.4g}" for k, v in ev.items()))
        per_seed.append(record)
    return {"per_seed": per_seed, "summary": summarise(per_seed)}


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means and standard deviations of every reported number."""

    def stats(xs: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0}

    conds = list(per_seed[0]["repeat_last"])
    out: dict[str, Any] = {"repeat_last": {c: stats([r["repeat_last"][c] for r in per_seed]) for c in conds}}
    for label in ("baseline", "smr"):
        out[label] = {
            "mse": {c: stats([r[label]["eval"][c]["mse"] for r in per_seed]) for c in conds},
            "state_norm_ratio": {
                c: stats([r[label]["eval"][c]["state_norm_ratio"] for r in per_seed]) for c in conds
            },
            "degradation": {
                c: stats([r[label]["degradation"][c] for r in per_seed]) for c in conds if c != "same"
            },
        }
    out["seeds_smr_degrades_less_jitter"] = sum(
        r["smr"]["degradation"]["jitter"] < r["baseline"]["degradation"]["jitter"] for r in per_seed
    )
    out["seeds_smr_lower_mse_jitter"] = sum(
        r["smr"]["eval"]["jitter"]["mse"] < r["baseline"]["eval"]["jitter"]["mse"] for r in per_seed
    )
    out["seeds_smr_norm_ratio_not_larger_jitter"] = sum(
        r["smr"]["eval"]["jitter"]["state_norm_ratio"] <= r["baseline"]["eval"]["jitter"]["state_norm_ratio"]
        for r in per_seed
    )
    return out
