"""Non-stable-state (NSS) diagnostics and the pieces of the sampling-shift experiment.

The paper (Qi et al. 2024, abstract) reads an SSM as a sampled system: when the sampling points differ
from those of training, the sampling error accumulates in the hidden state (the NSS problem), and
adjusting the input with early memories (SMR) adapts the model to the step (sampling step adaptation).
This module measures both sides (ours):

* :func:`state_norms` / :func:`nss_ratio` - the NSS indicator ``max_k ||x_k|| / median_k ||x_k||`` of a
  block's hidden state;
* :func:`evaluate` - MSE per test condition, the excess over the oracle's floor, the indicator;
* :func:`scale_step_correlation` - how SMR's learned scale ``s_k`` follows the true relative step
  ``tau_k`` (the mechanism: ``B_bar(Delta_k) u_k ~ B_bar(Delta) (s_k u_k)`` with ``s_k ~ Delta_k / Delta``);
* :class:`SSMRegressor` and :func:`train_regressor` - the per-position regression model and its training.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from smr_ssm.blocks import SSMBlock, build_blocks, host_kwargs
from smr_ssm.config import ModelConfig, TrainConfig
from smr_ssm.data.nonuniform import SamplingTask
from smr_ssm.smr import StateMemoryReplay

__all__ = [
    "MODEL_SPECS",
    "RegressionOutput",
    "SSMRegressor",
    "build_regressor",
    "evaluate",
    "model_label",
    "nss_ratio",
    "scale_step_correlation",
    "state_norms",
    "summarise",
    "train_regressor",
]

#: ``nss.models`` entries -> (uses SMR, given the true steps)
MODEL_SPECS = {
    "baseline": (False, False),
    "smr": (True, False),
    "baseline_steps": (False, True),
    "smr_steps": (True, True),
}

HOST_NAMES = {"s4d": "S4D", "s4": "S4", "s5": "S5", "mamba": "Mamba", "mega": "Mega", "mega_ema": "Mega-EMA"}


def model_label(name: str, host: str) -> str:
    """Display name of an ``nss.models`` entry on ``host`` (``"smr"``, ``"s4d"`` -> ``"S4D+SMR"``)."""
    smr, steps = MODEL_SPECS[name]
    label = HOST_NAMES.get(host, host) + ("+SMR" if smr else "")
    return label + (" (true steps)" if steps else "")


@dataclass
class RegressionOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class SSMRegressor(nn.Module):
    """Per-position regressor: ``Linear(input_dim, d)`` -> SSM blocks -> norm -> ``Linear(d, 1)``, MSE.

    The blocks are those of :class:`~smr_ssm.models.SSMForSequenceRegression` built from a
    :class:`~smr_ssm.config.ModelConfig`, without the transformers wrapper (the quick reproduction does
    not import transformers).
    """

    def __init__(self, cfg: ModelConfig, input_dim: int = 1) -> None:
        super().__init__()
        kw = host_kwargs(
            cfg.layer_type, cfg.d_state, cfg.dt_min, cfg.dt_max, cfg.smr_position, cfg.d_conv, cfg.expand,
            cfg.dt_rank, cfg.scan_backend, cfg.s5_blocks, cfg.mega_chunk, cfg.mega_attention,
            cfg.spade_window, cfg.n_heads,
        )  # fmt: skip
        self.encoder = nn.Linear(input_dim, cfg.d_model)
        self.layers = build_blocks(
            cfg.n_layer, cfg.d_model, cfg.layer_type, kw, smr=cfg.smr, bidirectional=cfg.bidirectional,
            norm=cfg.norm, prenorm=cfg.prenorm, mixer_output=cfg.mixer_output, ffn=cfg.ffn,
            ffn_expand=cfg.ffn_expand, dropout=cfg.dropout,
        )  # fmt: skip
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)

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


def build_regressor(
    model: ModelConfig, name: str, seed: int, input_dim: int, steps_host: str | None = None
) -> tuple[SSMRegressor, bool]:
    """The regressor of ``nss.models`` entry ``name`` built with ``seed`` (``(model, uses_steps)``).

    ``baseline`` and ``smr`` built with the same seed have identical shared parameters (copied from the
    model without SMR, so also when SMR's own initialisation draws random numbers): the two differ only
    by SMR.
    """
    from papers_shared.device import seed_everything

    smr, steps = MODEL_SPECS[name]
    plain = replace(model, smr=None)
    if steps and steps_host is not None:
        plain = replace(plain, layer_type=steps_host)
    seed_everything(seed)
    reg = SSMRegressor(replace(plain, smr=model.smr) if smr else plain, input_dim)
    if smr and model.smr is not None:  # an SMR with a random init draws numbers: copy the shared weights
        seed_everything(seed)
        reg.load_state_dict(SSMRegressor(plain, input_dim).state_dict(), strict=False)
    return reg, steps


def state_norms(layer: nn.Module, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden-state norm ``||x_k||`` per position ``(B, L)`` of a host with ``states`` or of an
    :class:`~smr_ssm.blocks.SSMBlock` (its input normalisation applied first, as in its forward)."""
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
    """``max_k ||x_k|| / median_k ||x_k||`` per sequence (the NSS indicator)."""
    return norms.max(dim=1).values / norms.median(dim=1).values.clamp_min(1e-12)


@torch.no_grad()
def evaluate(
    model: SSMRegressor,
    conditions: Mapping[str, SamplingTask],
    with_steps: bool = False,
    norm_sequences: int = 32,
) -> dict[str, dict[str, float]]:
    """Per condition: ``mse``, ``excess`` over the oracle's floor, and (``norm_sequences > 0``) the NSS
    indicator of the first block on the first ``norm_sequences`` sequences."""
    model.eval()
    out = {}
    for name, task in conditions.items():
        batch = task.batch(slice(None), with_steps)
        pred = model(input_values=batch["input_values"], timesteps=batch.get("timesteps")).logits
        mse = torch.mean((pred - batch["labels"]) ** 2).item()
        res = {"mse": mse, "excess": mse - task.floor}
        if norm_sequences:
            h = model.embed(batch["input_values"][:norm_sequences])
            ts = None if not with_steps else batch["timesteps"][:norm_sequences]
            res["state_norm_ratio"] = nss_ratio(state_norms(model.layers[0], h, ts)).mean().item()
        out[name] = res
    return out


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return float((x * y).sum() / den) if den > 0 else 0.0


@torch.no_grad()
def scale_step_correlation(
    model: SSMRegressor, tasks: Mapping[str, SamplingTask], edges: torch.Tensor | None = None
) -> dict[str, Any]:
    """How the first block's SMR scale ``s_k`` (``(B, L, H)``) follows the true relative step ``tau_k``.

    Over all positions of all ``tasks`` (concatenated, so that the steps span the training and the
    shifted ranges): ``r_mean`` - Pearson r between the channel-mean scale and ``tau``; ``r_abs_channel``
    - mean over channels of ``|r|`` between each channel's scale and ``tau``; ``slope`` - least-squares
    slope of the channel-mean scale on ``tau``; the mean scale per task; and the channel-mean scale
    averaged in the bins of ``tau`` between ``edges`` (default: 12 bins over the observed range; an empty
    bin gives NaN), for a plot.
    """
    block = model.layers[0]
    smr = block.smr
    if not isinstance(smr, StateMemoryReplay):
        raise ValueError("the model's first block has no SMR module")
    model.eval()
    scales, steps, per_task = [], [], {}
    for name, task in tasks.items():
        h = model.embed(task.inputs)
        s = smr.scale(block.norm(h) if block.prenorm else h)  # the input SMR sees in the first block
        scales.append(s)
        steps.append(task.steps)
        per_task[name] = float(s.mean())
    s, tau = torch.cat(scales), torch.cat(steps)
    s_mean = s.mean(-1)
    x = tau.flatten().double()
    yv = s_mean.flatten().double()
    slope = float(((x - x.mean()) * (yv - yv.mean())).sum() / (x - x.mean()).pow(2).sum())
    per_channel = [abs(_pearson(s[..., h].flatten(), tau.flatten())) for h in range(s.shape[-1])]
    if edges is None:
        edges = torch.linspace(float(x.min()), float(x.max()), 13, dtype=torch.float64)
    edges = edges.double()
    which = torch.bucketize(x, edges[1:-1])
    centres = ((edges[1:] + edges[:-1]) / 2).tolist()
    binned = [
        (c, float(yv[which == i].mean()) if (which == i).any() else float("nan"))
        for i, c in enumerate(centres)
    ]
    return {
        "r_mean": _pearson(s_mean.flatten(), tau.flatten()),
        "r_abs_channel": statistics.fmean(per_channel),
        "slope": slope,
        "scale_mean": per_task,
        "binned": {"step": [b[0] for b in binned], "scale": [b[1] for b in binned]},
    }


def train_regressor(
    model: SSMRegressor,
    train: TrainConfig,
    seed: int,
    pool: SamplingTask,
    with_steps: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Train on ``pool`` with the package trainer (``train`` with ``seed``; no checkpoints).

    ``should_stop`` is polled before every batch: when it returns True the training stops with
    :class:`KeyboardInterrupt` (how the experiment cancels its worker threads).
    """
    from smr_ssm.trainer import StepSampler, Trainer

    sampler = StepSampler(len(pool), train.batch_size, seed=seed)

    def batch_fn(i: int) -> dict[str, torch.Tensor]:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt("training cancelled")
        return pool.batch(sampler(i), with_steps)

    tcfg = replace(train, seed=seed, eval_every=0, checkpoint_every=0, device="cpu")
    return Trainer(model, tcfg, batch_fn, out_dir=None, progress=progress).train()


def summarise(per_seed: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Seed means and standard deviations of every number, per model and condition."""

    def stats(xs: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0}

    conds = list(per_seed[0]["floor"])
    out: dict[str, Any] = {
        "floor": {c: stats([r["floor"][c] for r in per_seed]) for c in conds},
        "hold": {c: stats([r["hold"][c] for r in per_seed]) for c in conds},
    }
    for name in models:
        evs = [r[name]["eval"] for r in per_seed]
        out[name] = {key: {c: stats([ev[c][key] for ev in evs]) for c in conds} for key in evs[0][conds[0]]}
        if "scale_step" in per_seed[0][name]:
            out[name]["scale_step"] = {
                k: stats([r[name]["scale_step"][k] for r in per_seed])
                for k in ("r_mean", "r_abs_channel", "slope")
            }
    return out
