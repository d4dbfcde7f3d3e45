"""COFS-DPO and the continual baselines on one shared trainer/evaluator (arXiv 2406.05534: COFS-DPO and its cross-domain comparison; baselines ours).

:class:`ContinualRunner` trains a sequence of preference domains on one frozen base model and evaluates the
deployed adapter on every seen domain after each one (score matrix ``R[k, j]``). Methods:

- ``"cofs"`` — COFS-DPO: OFS-DPO per domain, memory of per-domain fast (leader) modules ``φ_k``, deployed
  ``ψ_k = Σ_i w_i φ_i`` (``weights``: uniform / ema / search / explicit list; ``combine_space``: ``param`` or exact
  ``delta``), next domain warm-started from ``ψ_{k−1}`` (``init_from="previous"``) or fresh / from ``φ_{k−1}``.
- ``"seq_ofs"`` — sequential OFS-DPO (both modules and roles carried over), no combination.
- ``"seq_dpo"`` — sequential DPO (trl ``DPOTrainer``): the same adapter keeps training; shows forgetting.
- ``"merge_dpo"`` — per-domain DPO adapters trained from the base, merged with PEFT ``add_weighted_adapter``
  (``merge_type`` ``cat`` = task arithmetic, ``ties``/``ties_svd``, ``svd``; uniform weights).
- ``"joint_dpo"`` — multi-task DPO on the union of the domains seen so far, retrained each stage (upper bound,
  not continual).

Every method uses the same ``OFSDPOConfig`` (DPO baselines get its ``DPOConfig`` part: same lr η_F, sampler,
schedule, β) and the same evaluation (:func:`ofs_dpo.evaluation.implicit_reward_accuracy`), so the comparison
is fair. The base model is reused across domains (PEFT layers are unloaded between them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from ofs_dpo.adapters import (
    adapter_state_dict,
    combine_lora_state_dicts,
    combined_lora_config,
    load_adapter_state_dict,
    lora_scaling,
    lowrank_factors,
)
from ofs_dpo.config import CONTINUAL_METHODS, OFSDPOConfig
from ofs_dpo.evaluation import continual_metrics, gradient_weights, implicit_reward_accuracy
from ofs_dpo.losses import normalise_weights, weights_on_simplex
from ofs_dpo.trainer import OFSDPOTrainer

__all__ = [
    "COFSDPO",
    "ContinualRunner",
    "DomainResult",
    "GradientWeightProbe",
    "dpo_config_from",
    "unwrap_base",
]

WEIGHT_MODES = ("uniform", "ema", "search")
INIT_MODES = ("previous", "fresh", "last_fast")
MERGE_TYPES = ("cat", "ties", "ties_svd", "svd", "dare_ties_svd", "dare_linear_svd", "magnitude_prune_svd")


def dpo_config_from(args: OFSDPOConfig, **overrides: Any) -> DPOConfig:
    """The ``DPOConfig`` part of an ``OFSDPOConfig`` (same lr η_F, sampler, schedule, β, …) for DPO baselines."""
    names = [f.name for f in fields(DPOConfig) if f.init]
    kwargs = {n: getattr(args, n) for n in names}
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def unwrap_base(peft_model: Any) -> torch.nn.Module:
    """Remove the PEFT layers (no merge) and trl's fused-head patch; returns the original base model."""
    base = peft_model.unload()
    base.__dict__.pop("forward", None)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in base.__dict__:
            base.__dict__.pop(attr)
    return base


class GradientWeightProbe(TrainerCallback):
    """Every ``every`` optimiser steps, record the mean gradient weights on a fixed probe set (the paper's Proposition 3.3.1).

    For DPO: ``σ(−h)`` of the trained adapter. For OFS-DPO: ``σ(−h_L)`` of the leader and the chase weight
    ``σ(−(h_L − h_C))``. Identical measurement for both trainers, so their curves are comparable.
    """

    def __init__(self, trainer: Any, probe: Dataset, every: int, beta: float) -> None:
        self.trainer = trainer
        self.probe = probe
        self.every = every
        self.beta = beta
        self.records: list[dict[str, float]] = []

    def _measure(self, step: int) -> None:
        tr = self.trainer
        pm = tr.accelerator.unwrap_model(tr.model)
        if isinstance(tr, OFSDPOTrainer):
            chaser = tr.slow_adapter if tr.leader == "fast" else tr.fast_adapter
            w = gradient_weights(pm, self.probe, tr.processing_class, tr.leader_adapter, chaser, self.beta)
        else:
            w = gradient_weights(pm, self.probe, tr.processing_class, "default", None, self.beta)
        self.records.append({"step": float(step), **w})

    def on_train_begin(self, args, state, control, **kwargs):
        self._measure(0)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0:
            self._measure(state.global_step)
        return control


@dataclass
class DomainResult:
    """What one :meth:`ContinualRunner.fit_domain` call produced."""

    domain: str
    scores: dict[str, float]
    weights: list[float]
    train_metrics: dict[str, float]
    probe: list[dict[str, float]]
    extra: dict[str, float]
    leader: str
    #: OFS-DPO only: role swaps and role checks during this domain
    chasing: dict[str, int] = field(default_factory=dict)


class ContinualRunner:
    """Continual multi-domain preference alignment: COFS-DPO and the baselines (ours: sequential DPO/OFS-DPO, PEFT merging, joint DPO).

    Args:
        model: the base causal LM (a ``PreTrainedModel``, not wrapped); it is reused across domains.
        processing_class: its tokenizer.
        lora_config: ``peft.LoraConfig`` of every adapter (both OFS modules, every baseline adapter).
        args: ``OFSDPOConfig`` template; ``output_dir`` gets a per-domain sub-folder.
        method: one of ``cofs``, ``seq_ofs``, ``seq_dpo``, ``merge_dpo``, ``joint_dpo``.
        weights: COFS combination weights: ``"uniform"``, ``"ema"`` (with ``lam``), ``"search"`` (needs
            ``validation_sets``) or a list of K floats (the first k are renormalised at stage k).
        combine_space: ``"param"`` (average the LoRA factors) or ``"delta"`` (exact Σ w_i B_i A_i).
        init_from: COFS warm start: ``"previous"`` (ψ_{k−1}), ``"fresh"`` or ``"last_fast"`` (φ_{k−1}).
        metric_fns: extra per-domain metrics ``fn(peft_model, tokenizer, domain, eval_dataset) -> float`` computed
            on the deployed adapter (e.g. win rate with a reward model).
        probe_dataset / probe_every: record gradient weights during training (:class:`GradientWeightProbe`).
        quiet: drop trl's log printing and progress bars (the logs stay in ``log_history``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processing_class: Any,
        lora_config: Any,
        args: OFSDPOConfig,
        method: str = "cofs",
        weights: str | Sequence[float] = "uniform",
        lam: float = 0.5,
        combine_space: str = "param",
        init_from: str = "previous",
        search_step: float = 0.1,
        validation_sets: dict[str, Dataset] | None = None,
        merge_type: str = "cat",
        merge_density: float = 0.5,
        eval_batch_size: int = 32,
        metric_fns: dict[str, Callable[..., float]] | None = None,
        probe_dataset: Dataset | None = None,
        probe_every: int = 0,
        callbacks: Sequence[TrainerCallback] | None = None,
        quiet: bool = False,
    ) -> None:
        from peft import LoraConfig, PeftModel

        if method not in CONTINUAL_METHODS:
            raise ValueError(f"method must be one of {list(CONTINUAL_METHODS)}, got {method!r}")
        if isinstance(model, PeftModel):
            raise TypeError("pass the base model; the runner wraps it with PEFT per domain")
        if not isinstance(lora_config, LoraConfig):
            raise TypeError(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}")
        if not isinstance(args, OFSDPOConfig):
            raise TypeError(f"args must be an OFSDPOConfig, got {type(args).__name__}")
        if isinstance(weights, str):
            if weights not in WEIGHT_MODES:
                raise ValueError(
                    f"weights must be one of {list(WEIGHT_MODES)} or a list of floats, got {weights!r}"
                )
            if weights == "search" and not validation_sets:
                raise ValueError(
                    "weights='search' needs validation_sets of the seen domains (it breaks the no-replay rule, "
                    "so it is opt-in; ours)"
                )
        else:
            normalise_weights(weights)
        if combine_space not in ("param", "delta"):
            raise ValueError(f"combine_space must be 'param' or 'delta', got {combine_space!r}")
        if init_from not in INIT_MODES:
            raise ValueError(f"init_from must be one of {list(INIT_MODES)}, got {init_from!r}")
        if not 0.0 < lam <= 1.0:
            raise ValueError(f"lam must lie in (0, 1], got {lam}")
        if merge_type not in MERGE_TYPES:
            raise ValueError(f"merge_type must be one of {list(MERGE_TYPES)}, got {merge_type!r}")
        self.model = model
        self.tokenizer = processing_class
        self.lora_config = lora_config
        self.args = args
        self.method = method
        self.weights = weights if isinstance(weights, str) else [float(w) for w in weights]
        self.lam = lam
        self.combine_space = combine_space
        self.init_from = init_from
        self.search_step = search_step
        self.validation_sets = validation_sets or {}
        self.merge_type = merge_type
        self.merge_density = merge_density
        self.eval_batch_size = eval_batch_size
        self.metric_fns = dict(metric_fns or {})
        self.probe_dataset = probe_dataset
        self.probe_every = probe_every
        self.callbacks = list(callbacks or [])
        self.quiet = quiet
        # State
        self.domains: list[str] = []
        self.memory: list[dict[str, torch.Tensor]] = []
        self.deployed: dict[str, torch.Tensor] | None = None
        self.deployed_config: Any = None
        self.deployed_weights: list[float] = []
        self.last_fast: dict[str, torch.Tensor] | None = None
        self.last_slow: dict[str, torch.Tensor] | None = None
        self.last_leader: str = "fast"
        self.matrix: list[list[float]] = []
        self.results: list[DomainResult] = []
        self._joint_pool: list[Dataset] = []
        self._eval_sets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------------------------------------------------

    @property
    def uses_ofs(self) -> bool:
        return self.method in ("cofs", "seq_ofs")

    def branch(self, method: str, **overrides: Any) -> ContinualRunner:
        """A runner with another method that continues from this one's state after its first domain.

        Valid when the first stage is identical (``cofs``/``seq_ofs`` share OFS-DPO on domain 1; ``seq_dpo``,
        ``merge_dpo`` and ``joint_dpo`` share DPO on domain 1). Used to avoid recomputing shared stages.
        """
        if len(self.domains) != 1:
            raise ValueError("branch() is only defined after exactly one domain")
        other = ContinualRunner.__new__(ContinualRunner)
        other.__dict__.update({k: copy.copy(v) for k, v in self.__dict__.items()})
        other.matrix = [list(r) for r in self.matrix]
        other.results = list(self.results)
        other.method = method
        if (method in ("cofs", "seq_ofs")) != self.uses_ofs:
            raise ValueError(f"cannot branch {method!r} from {self.method!r}: their first stages differ")
        for k, v in overrides.items():
            if not hasattr(other, k):
                raise ValueError(f"unknown runner setting {k!r}")
            setattr(other, k, v)
        return other

    # ------------------------------------------------------------------------------------------------------------

    def _initial_state(self, k: int) -> tuple[dict | None, dict | None, str]:
        """(fast init, slow init, leader) for domain index ``k`` (0-based)."""
        if k == 0 or self.method in ("merge_dpo", "joint_dpo"):
            return None, None, "fast"
        if self.method == "seq_dpo":
            return self.last_fast, None, "fast"
        if self.method == "seq_ofs":
            return self.last_fast, self.last_slow, self.last_leader
        if self.init_from == "fresh":
            return None, None, "fast"
        if self.init_from == "last_fast":
            return self.memory[-1], self.memory[-1], "fast"
        init = self.deployed
        if self.deployed_config.r != self.lora_config.r:
            init = lowrank_factors(
                self.deployed,
                self.lora_config.r,
                lora_scaling(self.deployed_config),
                lora_scaling(self.lora_config),
            )
        return init, init, "fast"

    def _trainer(self, name: str, train_dataset: Dataset, k: int, eval_dataset: Dataset | None):
        out = str(Path(self.args.output_dir) / f"{k:02d}-{name}-{self.method}")
        if self.uses_ofs:
            trainer_cls, args = OFSDPOTrainer, replace(self.args, output_dir=out)
        else:
            extra = {"train_sampling_strategy": "random"} if self.method == "joint_dpo" else {}
            trainer_cls, args = DPOTrainer, dpo_config_from(self.args, output_dir=out, **extra)
        return trainer_cls(
            self.model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=self.tokenizer,
            peft_config=self.lora_config,
            callbacks=self.callbacks,
        )

    def fit_domain(
        self,
        name: str,
        train_dataset: Dataset,
        eval_datasets: dict[str, Dataset] | None = None,
        resume_from_checkpoint: str | bool | None = None,
    ) -> DomainResult:
        """Train on domain ``name`` (online, one pass by default), update the deployed adapter, evaluate it.

        ``eval_datasets`` maps domain names to held-out sets; the deployed adapter is scored on every seen domain
        that has one (row ``k`` of ``R``).
        """
        if name in self.domains:
            raise ValueError(f"domain {name!r} was already trained")
        if len(train_dataset) == 0:
            raise ValueError(f"domain {name!r} has an empty training set")
        self._eval_sets.update(eval_datasets or {})
        k = len(self.domains)
        if self.method == "joint_dpo":
            self._joint_pool.append(train_dataset)
            train_dataset = concatenate_datasets(self._joint_pool)
        fast_init, slow_init, leader = self._initial_state(k)
        trainer = self._trainer(name, train_dataset, k, None)
        if self.quiet:
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
        pm = trainer.model
        probe = None
        if self.probe_dataset is not None and self.probe_every > 0:
            probe = GradientWeightProbe(trainer, self.probe_dataset, self.probe_every, self.args.beta)
            trainer.add_callback(probe)
        if fast_init is not None:
            load_adapter_state_dict(pm, "default", fast_init)
        if isinstance(trainer, OFSDPOTrainer):
            if slow_init is not None:
                load_adapter_state_dict(pm, trainer.slow_adapter, slow_init)
            elif fast_init is not None and self.args.identical_init:
                load_adapter_state_dict(pm, trainer.slow_adapter, fast_init)
            trainer.chasing.leader = leader if self.args.swap_mode == "roles" else "fast"
        train_out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        if isinstance(trainer, OFSDPOTrainer):
            phi = adapter_state_dict(pm, trainer.leader_adapter)
            self.last_fast = adapter_state_dict(pm, trainer.fast_adapter)
            self.last_slow = adapter_state_dict(pm, trainer.slow_adapter)
            self.last_leader = trainer.leader
            chasing = {"num_swaps": trainer.chasing.num_swaps, "num_checks": len(trainer.chasing.history)}
        else:
            phi = adapter_state_dict(pm, "default")
            self.last_fast = phi
            chasing = {}
        self.model = unwrap_base(pm)
        del trainer, pm
        self.memory.append(phi)
        self.domains.append(name)
        weights = self._combine()
        scores = self.evaluate({d: self._eval_sets[d] for d in self.domains if d in self._eval_sets})
        extra = self._extra_metrics(name)
        self.matrix.append([scores.get(d, math.nan) for d in self.domains])
        result = DomainResult(
            domain=name,
            scores=scores,
            weights=weights,
            train_metrics={
                k2: float(v) for k2, v in train_out.metrics.items() if isinstance(v, (int, float))
            },
            probe=list(probe.records) if probe is not None else [],
            extra=extra,
            leader=self.last_leader,
            chasing=chasing,
        )
        self.results.append(result)
        return result

    # ------------------------------------------------------------------------------------------------------------
    # Combination (COFS-DPO; weights and spaces ours)
    # ------------------------------------------------------------------------------------------------------------

    def _weights_for_stage(self) -> list[float]:
        k = len(self.memory)
        if self.method == "merge_dpo":
            return [1.0 / k] * k
        if self.method != "cofs":
            return [0.0] * (k - 1) + [1.0]
        if isinstance(self.weights, list):
            if len(self.weights) < k:
                raise ValueError(
                    f"explicit weights list has {len(self.weights)} entries, stage {k} needs {k}"
                )
            return normalise_weights(self.weights[:k])
        if self.weights == "uniform":
            return [1.0 / k] * k
        if self.weights == "ema":
            prev = self.deployed_weights or []
            return [w * (1 - self.lam) for w in prev] + [self.lam if prev else 1.0]
        return self._search_weights()

    def _search_weights(self) -> list[float]:
        k = len(self.memory)
        if k > 4:
            raise ValueError("weights='search' is limited to k <= 4 domains (simplex grid; ours)")
        seen = {d: self.validation_sets[d] for d in self.domains if d in self.validation_sets}
        if not seen:
            raise ValueError(f"weights='search' found no validation set for the seen domains {self.domains}")
        best, best_w = -math.inf, None
        for w in weights_on_simplex(k, self.search_step):
            sd, cfg = self._combined(list(w))
            score = sum(self._score_state(sd, cfg, ds) for ds in seen.values()) / len(seen)
            if score > best + 1e-12:
                best, best_w = score, list(w)
        return best_w

    def _combined(self, weights: list[float]) -> tuple[dict[str, torch.Tensor], Any]:
        if self.method == "merge_dpo":
            return self._peft_merge(weights)
        space = self.combine_space if self.method == "cofs" else "param"
        if space == "param":
            cfg = combined_lora_config([self.lora_config] * len(self.memory), "param")
            return combine_lora_state_dicts(self.memory, weights, "param"), cfg
        keep = [i for i, w in enumerate(weights) if w > 0]
        cfg = combined_lora_config([self.lora_config] * len(keep), "delta")
        sd = combine_lora_state_dicts(
            [self.memory[i] for i in keep],
            [weights[i] for i in keep],
            "delta",
            scalings=[lora_scaling(self.lora_config)] * len(keep),
            new_scaling=lora_scaling(cfg),
        )
        return sd, cfg

    def _peft_merge(self, weights: list[float]) -> tuple[dict[str, torch.Tensor], Any]:
        """PEFT ``add_weighted_adapter`` over the per-domain DPO adapters (merge baseline; ours)."""
        from peft import get_peft_model

        pm = get_peft_model(self.model, self.lora_config, adapter_name="d0")
        try:
            names = []
            for i, sd in enumerate(self.memory):
                name = f"d{i}"
                if i > 0:
                    pm.add_adapter(name, self.lora_config)
                load_adapter_state_dict(pm, name, sd)
                names.append(name)
            use = [n for n, w in zip(names, weights) if w > 0]
            ws = [w for w in weights if w > 0]
            if len(use) == 1:
                return adapter_state_dict(pm, use[0]), replace(self.lora_config)
            kwargs = {} if self.merge_type in ("cat", "svd") else {"density": self.merge_density}
            pm.add_weighted_adapter(use, ws, "merged", combination_type=self.merge_type, **kwargs)
            return adapter_state_dict(pm, "merged"), pm.peft_config["merged"]
        finally:
            self.model = unwrap_base(pm)

    def _combine(self) -> list[float]:
        weights = self._weights_for_stage()
        self.deployed, self.deployed_config = self._combined(weights)
        self.deployed_weights = weights
        return weights

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------

    def _with_adapter(self, state: dict[str, torch.Tensor], config: Any):
        from peft import get_peft_model

        pm = get_peft_model(self.model, replace(config, inference_mode=True))
        load_adapter_state_dict(pm, "default", state)
        return pm

    def _score_state(self, state: dict[str, torch.Tensor], config: Any, dataset: Dataset) -> float:
        pm = self._with_adapter(state, config)
        try:
            return implicit_reward_accuracy(
                pm, dataset, self.tokenizer, "default", self.args.beta, batch_size=self.eval_batch_size
            )
        finally:
            self.model = unwrap_base(pm)

    def evaluate(self, datasets: dict[str, Dataset]) -> dict[str, float]:
        """Implicit-reward accuracy of the deployed adapter on each dataset (one row of ``R``)."""
        if self.deployed is None:
            raise RuntimeError("nothing deployed yet: call fit_domain first")
        pm = self._with_adapter(self.deployed, self.deployed_config)
        try:
            return {
                d: implicit_reward_accuracy(
                    pm, ds, self.tokenizer, "default", self.args.beta, batch_size=self.eval_batch_size
                )
                for d, ds in datasets.items()
            }
        finally:
            self.model = unwrap_base(pm)

    def _extra_metrics(self, name: str) -> dict[str, float]:
        if not self.metric_fns:
            return {}
        pm = self._with_adapter(self.deployed, self.deployed_config)
        try:
            out = {}
            for metric, fn in self.metric_fns.items():
                for d in self.domains:
                    out[f"{metric}/{d}"] = float(fn(pm, self.tokenizer, d, self._eval_sets.get(d)))
            return out
        finally:
            self.model = unwrap_base(pm)

    def summary(self) -> dict[str, Any]:
        """Score matrix, final average and forgetting (ours: score matrix metrics as in continual-learning papers)."""
        k = len(self.matrix)
        square = [row + [math.nan] * (k - len(row)) for row in self.matrix]
        out: dict[str, Any] = {"method": self.method, "domains": list(self.domains), "matrix": square}
        if k and all(math.isfinite(v) for v in square[-1]):
            out.update(continual_metrics(square))
        return out

    # ------------------------------------------------------------------------------------------------------------
    # Persistence
    # ------------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "domains": list(self.domains),
            "memory": self.memory,
            "deployed": self.deployed,
            "deployed_config": None
            if self.deployed_config is None
            else _plain(self.deployed_config.to_dict()),
            "deployed_weights": self.deployed_weights,
            "last_fast": self.last_fast,
            "last_slow": self.last_slow,
            "last_leader": self.last_leader,
            "matrix": self.matrix,
            "joint_pool_sizes": [len(d) for d in self._joint_pool],
        }

    def save(self, path: str | Path) -> Path:
        """Atomically save the runner state (memory, deployed adapter, score matrix) with ``torch.save``."""
        from papers_shared.checkpoints import atomic_save

        return atomic_save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Restore a state saved by :meth:`save` (same method); joint-DPO data pools are not restored."""
        from peft import LoraConfig

        from papers_shared.checkpoints import load_checkpoint
        from papers_shared.errors import CheckpointError

        state = load_checkpoint(path)
        if not isinstance(state, dict) or "matrix" not in state:
            raise CheckpointError(f"{path} is not a runner state written by ContinualRunner.save")
        if state.get("method") != self.method:
            raise CheckpointError(
                f"{path} is a runner state for method {state.get('method')!r}, this runner is {self.method!r}"
            )
        self.domains = list(state["domains"])
        self.memory = list(state["memory"])
        self.deployed = state["deployed"]
        cfg = state["deployed_config"]
        if cfg is not None:
            cfg = {k: v for k, v in cfg.items() if k in {f.name for f in fields(LoraConfig)}}
        self.deployed_config = None if cfg is None else LoraConfig(**cfg)
        self.deployed_weights = list(state["deployed_weights"])
        self.last_fast, self.last_slow = state["last_fast"], state["last_slow"]
        self.last_leader = state["last_leader"]
        self.matrix = [list(r) for r in state["matrix"]]
        if self.method == "joint_dpo" and state["joint_pool_sizes"]:
            raise ValueError("joint_dpo cannot resume: its data pool is not stored; rerun it from the start")


class COFSDPO(ContinualRunner):
    """COFS-DPO (arXiv 2406.05534, abstract): :class:`ContinualRunner` with ``method="cofs"``."""

    def __init__(self, model, processing_class, lora_config, args, **kwargs: Any) -> None:
        if kwargs.pop("method", "cofs") != "cofs":
            raise ValueError("COFSDPO is the 'cofs' method; use ContinualRunner for the baselines")
        super().__init__(model, processing_class, lora_config, args, method="cofs", **kwargs)

    @property
    def deployed_adapter(self) -> dict[str, torch.Tensor]:
        """State dict of the deployed combination ψ_k."""
        if self.deployed is None:
            raise RuntimeError("nothing deployed yet: call fit_domain first")
        return self.deployed


def _plain(value: Any) -> Any:
    """Enums (peft's ``PeftType``/``TaskType``) -> their values, sets -> sorted lists: loadable with
    ``weights_only=True``."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
