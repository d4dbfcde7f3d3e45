"""Configs: ``OFSDPOConfig(DPOConfig)`` (hyper-parameters ours, see docs/methods/ofs-dpo.md) and the experiment dataclasses read from YAML.

``OFSDPOConfig`` keeps every ``DPOConfig``/``TrainingArguments`` field and meaning (``learning_rate`` is the fast
module's η_F) and adds the OFS-DPO fields; defaults that differ from trl's are ours:
``learning_rate=5e-5``, one pass over the stream (``num_train_epochs=1``) in order
(``train_sampling_strategy="sequential"``, the online protocol of arXiv 2406.05534, abstract and Sec. 1) and ``warmup_steps=0.1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from trl import DPOConfig

from ofs_dpo.losses import CHASE_MODES, SUPPORTED_LOSS_TYPES
from papers_shared.config import Config, ConfigError
from papers_shared.config import field as cfield

__all__ = [
    "CONTINUAL_METHODS",
    "EVAL_MODULES",
    "IN_DOMAIN_METHODS",
    "SWAP_MODES",
    "ContinualSettings",
    "DataSettings",
    "EvalSettings",
    "ExperimentConfig",
    "LoraSettings",
    "ModelSettings",
    "OFSDPOConfig",
    "TrainSettings",
]

SWAP_MODES = ("roles", "weights", "none")
EVAL_MODULES = ("leader", "fast", "slow", "both")


@dataclass
class OFSDPOConfig(DPOConfig):
    r"""Configuration of :class:`~ofs_dpo.OFSDPOTrainer`: every ``DPOConfig`` field plus the OFS-DPO ones.

    Parameters (provenance in brackets; see docs/methods/ofs-dpo.md):
        slow_lr_ratio (`float`, defaults to `0.1`): η_S/η_F [ours]; `1.0` is the "no speed difference" ablation.
        chase_alpha (`float`, defaults to `1.0`): weight α of L_DPO-FS [ours]; `0.0` gives two independent learners.
        chase_interval (`int`, defaults to `10`): K optimiser steps between role checks (the paper's Algorithm 1; K ours).
        chase_mode (`str`, defaults to `"minmax"`): chaser objective, `"minmax"` (the paper's Eq. 3-4, as a third-party re-implementation reads them) or `"pull"` [ours].
        swap_mode (`str`, defaults to `"roles"`): `"roles"` (the paper's Algorithm 1), `"weights"` [ours] or `"none"`.
        identical_init (`bool`, defaults to `True`): copy the fast adapter's initial tensors into the slow one [ours].
        chase_margin_clamp (`float`, *optional*): clamp Δ = h_L − h_C to ±value in the chase term [ours].
        fast_adapter_name / slow_adapter_name: PEFT adapter names; the fast adapter is trl's `"default"`.
        eval_module (`str`, defaults to `"leader"`): module(s) evaluated/logged at evaluation [ours].
        skip_nonfinite_steps (`bool`, defaults to `True`): skip a step whose OFS loss is NaN/inf [ours].
    """

    learning_rate: float = field(
        default=5e-5, metadata={"help": "Fast-module learning rate η_F (ours: typical LoRA-DPO value)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the stream; 1 = online."})
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={
            "help": "Sampler; 'sequential' streams the data once in order (online protocol, arXiv 2406.05534 abstract).",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warm-up; a float < 1 is a ratio."})

    slow_lr_ratio: float = field(
        default=0.1, metadata={"help": "η_S / η_F (ours; the paper: two modules at different speeds)."}
    )
    chase_alpha: float = field(
        default=1.0, metadata={"help": "Weight α of the chasing regulariser L_DPO-FS."}
    )
    chase_interval: int = field(
        default=10,
        metadata={"help": "Optimiser steps K between role checks (the paper's Algorithm 1; K ours)."},
    )
    chase_mode: str = field(
        default="minmax",
        metadata={"help": "Chaser objective (the paper's Eq. 3-4; pull ours).", "choices": list(CHASE_MODES)},
    )
    swap_mode: str = field(
        default="roles",
        metadata={"help": "Role swap (the paper's Algorithm 1; weights ours).", "choices": list(SWAP_MODES)},
    )
    identical_init: bool = field(
        default=True, metadata={"help": "Start the slow adapter equal to the fast one."}
    )
    chase_margin_clamp: float | None = field(
        default=None,
        metadata={"help": "Clamp Δ = h_L − h_C to ±value inside the chase term (None: no clamp)."},
    )
    fast_adapter_name: str = field(default="default", metadata={"help": "PEFT name of the fast adapter."})
    slow_adapter_name: str = field(default="slow", metadata={"help": "PEFT name of the slow adapter."})
    eval_module: str = field(
        default="leader", metadata={"help": "Module evaluated (ours).", "choices": list(EVAL_MODULES)}
    )
    skip_nonfinite_steps: bool = field(
        default=True, metadata={"help": "Skip the update when the OFS loss is NaN/inf (ours)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.slow_lr_ratio) and self.slow_lr_ratio > 0):
            raise ConfigError(f"slow_lr_ratio must be a finite number > 0, got {self.slow_lr_ratio}")
        if not (math.isfinite(self.chase_alpha) and self.chase_alpha >= 0):
            raise ConfigError(f"chase_alpha must be a finite number >= 0, got {self.chase_alpha}")
        if int(self.chase_interval) != self.chase_interval or self.chase_interval < 1:
            raise ConfigError(f"chase_interval must be an integer >= 1, got {self.chase_interval}")
        if self.chase_mode not in CHASE_MODES:
            raise ConfigError(f"chase_mode must be one of {list(CHASE_MODES)}, got {self.chase_mode!r}")
        if self.swap_mode not in SWAP_MODES:
            raise ConfigError(f"swap_mode must be one of {list(SWAP_MODES)}, got {self.swap_mode!r}")
        if self.eval_module not in EVAL_MODULES:
            raise ConfigError(f"eval_module must be one of {list(EVAL_MODULES)}, got {self.eval_module!r}")
        if self.chase_margin_clamp is not None and not self.chase_margin_clamp > 0:
            raise ConfigError(f"chase_margin_clamp must be > 0 or None, got {self.chase_margin_clamp}")
        if self.fast_adapter_name != "default":
            raise ConfigError(
                "fast_adapter_name must be 'default': trl creates, references and saves the trained adapter under "
                f"that name; got {self.fast_adapter_name!r}"
            )
        if self.slow_adapter_name in ("default", "ref", ""):
            raise ConfigError(
                f"slow_adapter_name must differ from 'default' and 'ref', got {self.slow_adapter_name!r}"
            )
        unsupported = [t for t in self.loss_type if t not in SUPPORTED_LOSS_TYPES]
        if unsupported:
            raise ConfigError(
                f"loss_type {unsupported} is not supported by OFS-DPO; supported: {list(SUPPORTED_LOSS_TYPES)}"
            )
        if self.f_divergence_type != "reverse_kl":
            raise ConfigError(
                "OFS-DPO supports f_divergence_type='reverse_kl' only (the chase term is reverse-KL DPO)"
            )
        if self.use_weighting:
            raise ConfigError("use_weighting (WPO) is not supported by OFS-DPO")
        if self.sync_ref_model:
            raise ConfigError(
                "sync_ref_model (TR-DPO) is not supported: the reference is the base with adapters off"
            )


# ---------------------------------------------------------------------------------------------------------------
# Experiment configs (YAML, `ofs-dpo <cmd> --config NAME [key=value ...]`), validated when built
# ---------------------------------------------------------------------------------------------------------------

IN_DOMAIN_METHODS = ("dpo", "ofs", "ofs_alpha0", "ofs_noswap", "ofs_ratio1")
CONTINUAL_METHODS = ("seq_dpo", "seq_ofs", "cofs", "merge_dpo", "joint_dpo")
TOY_DOMAINS = ("toy_a", "toy_b")
HUB_DOMAINS = ("tldr", "hh", "imdb")
WEIGHT_MODES = ("uniform", "ema", "search")


@dataclass
class ModelSettings(Config):
    """Policy backbone: a hub id / local folder, or ``"tiny-gpt2"`` (a random GPT2Config model, offline)."""

    name_or_path: str = cfield("tiny-gpt2", help="hub id or local folder of a causal LM, or 'tiny-gpt2'")
    n_layer: int = cfield(2, ge=1, help="tiny-gpt2 only: transformer blocks")
    n_head: int = cfield(2, ge=1, help="tiny-gpt2 only: attention heads")
    n_embd: int = cfield(64, ge=1, help="tiny-gpt2 only: width (a multiple of n_head)")
    n_positions: int = cfield(64, ge=1, help="tiny-gpt2 only: context length")
    dtype: Literal["float32", "bfloat16", "float16"] = cfield("float32", help="weights dtype")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name_or_path == "tiny-gpt2" and self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} must be a multiple of model.n_head={self.n_head}")


@dataclass
class LoraSettings(Config):
    """LoRA of both modules (ours): r 8, alpha 16, dropout 0.05, PEFT's per-architecture default targets."""

    r: int = cfield(8, ge=1, help="LoRA rank (same for the fast and the slow module)")
    lora_alpha: float = cfield(16.0, gt=0, help="LoRA alpha (scaling alpha / r)")
    lora_dropout: float = cfield(0.05, ge=0, lt=1, help="LoRA dropout probability")
    target_modules: list[str] | str | None = cfield(
        None, help="module names, 'all-linear', or null for PEFT's per-architecture default"
    )
    use_rslora: bool = cfield(False, help="rank-stabilised scaling alpha / sqrt(r)")


@dataclass
class DataSettings(Config):
    """Domains in training order: hub tasks (tldr, hh, imdb) or offline toy domains (toy_a, toy_b)."""

    domains: list[str] = cfield(
        default_factory=lambda: ["toy_a"],
        help=f"domains in training order, from {list(TOY_DOMAINS + HUB_DOMAINS)}",
    )
    n_train: int | None = cfield(1024, ge=1, help="training pairs per domain (null: all)")
    n_eval: int | None = cfield(256, ge=1, help="held-out pairs per domain (null: all)")
    eval_split: str = cfield("test", help="held-out split name of the hub tasks (e.g. test, validation)")
    toy_vocab: int = cfield(40, ge=4, help="toy domains: content tokens t0..t{V-1} (even)")
    toy_prompt_len: int = cfield(4, ge=1, help="toy domains: prompt tokens")
    toy_completion_len: int = cfield(6, ge=1, help="toy domains: completion tokens")
    data_seed: int = cfield(0, help="seed of the toy data and of IMDb prompt sampling")
    imdb_pairs_per_prompt: int = cfield(1, ge=1, help="imdb: sampled pairs per prompt")
    cache_dir: str | None = cfield(None, help="datasets cache folder (null: the HF default)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [d for d in self.domains if d not in TOY_DOMAINS + HUB_DOMAINS]
        if bad or not self.domains:
            raise ConfigError(
                f"data.domains={self.domains}: unknown or empty; choose from {list(TOY_DOMAINS + HUB_DOMAINS)}"
            )
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"data.domains={self.domains} repeats a domain")
        if self.toy_vocab % 2:
            raise ConfigError(f"data.toy_vocab={self.toy_vocab} must be even (pairs t(2r) / t(2r+1))")


@dataclass
class EvalSettings(Config):
    """Metrics: implicit-reward accuracy always; sampled reward / win rate with a reward model."""

    reward_accuracy: bool = cfield(True, help="held-out implicit-reward accuracy (always computed)")
    win_rate: bool = cfield(
        False, help="win rate of greedy samples over the dataset's chosen (needs reward_model)"
    )
    reward_model: str | None = cfield(None, help="hub id / folder of a pairwise reward model")
    sentiment_model: str | None = cfield(None, help="hub id / folder of a sentiment classifier (imdb)")
    n_generate: int = cfield(64, ge=1, help="prompts sampled for generation metrics")
    max_new_tokens: int = cfield(64, ge=1, help="generation length")
    batch_size: int = cfield(16, ge=1, help="evaluation batch size")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.win_rate and not self.reward_model:
            raise ConfigError(
                "eval.win_rate=true needs eval.reward_model (e.g. OpenAssistant/reward-model-deberta-v3-large-v2)"
            )


@dataclass
class ContinualSettings(Config):
    """COFS-DPO and the continual baselines (the combination rules are ours, see docs/methods/ofs-dpo.md)."""

    weights: str | list[float] = cfield(
        "uniform",
        help=f"COFS combination weights: one of {list(WEIGHT_MODES)} or an explicit list of floats >= 0",
    )
    lam: float = cfield(0.5, ge=0, le=1, help="weights=ema: weight of the newest fast module")
    combine_space: Literal["param", "delta"] = cfield(
        "param", help="param: average LoRA A and B; delta: exact sum of B A (rank k r)"
    )
    init_from: Literal["previous", "fresh", "last_fast"] = cfield(
        "previous",
        help="COFS warm start of domain k: the deployed combination, fresh, or the last fast module",
    )
    search_step: float = cfield(0.1, gt=0, le=1, help="weights=search: simplex grid step")
    merge_type: Literal[
        "cat", "ties", "ties_svd", "svd", "dare_ties_svd", "dare_linear_svd", "magnitude_prune_svd"
    ] = cfield("cat", help="merge_dpo baseline: PEFT add_weighted_adapter combination_type")
    merge_density: float = cfield(0.5, gt=0, le=1, help="merge_dpo with ties/dare: kept fraction")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.weights, str):
            if self.weights not in WEIGHT_MODES:
                raise ConfigError(
                    f"continual.weights={self.weights!r} is not one of {list(WEIGHT_MODES)} or a list"
                )
        elif not self.weights or not all(math.isfinite(w) and w >= 0 for w in self.weights):
            raise ConfigError(f"continual.weights={self.weights}: an explicit list needs finite values >= 0")


@dataclass
class TrainSettings(Config):
    """Training arguments: the OFS-DPO fields, the usual trl DPOConfig fields, and ``extra`` for any other.

    A field left ``null`` takes the ``OFSDPOConfig`` default (trl's, except those listed in its docstring).
    """

    learning_rate: float = cfield(
        5e-5, gt=0, help="fast-module learning rate eta_F (DPO baselines use it too)"
    )
    beta: float = cfield(0.1, gt=0, help="DPO temperature beta (implicit reward beta * log-ratio)")
    slow_lr_ratio: float = cfield(0.1, gt=0, help="eta_S / eta_F (1.0: the no-speed-difference ablation)")
    chase_alpha: float = cfield(
        1.0, ge=0, help="weight alpha of the chasing term L_DPO-FS (0: two independent DPOs)"
    )
    chase_interval: int = cfield(10, ge=1, help="optimiser steps K between role checks")
    chase_mode: Literal["minmax", "pull"] = cfield("minmax", help="chaser objective")
    swap_mode: Literal["roles", "weights", "none"] = cfield(
        "roles", help="role swap: labels, weights, or fixed"
    )
    identical_init: bool = cfield(True, help="start the slow adapter equal to the fast one")
    chase_margin_clamp: float | None = cfield(None, gt=0, help="clamp h_L - h_C to +-value in the chase term")
    eval_module: Literal["leader", "fast", "slow", "both"] = cfield("leader", help="module(s) evaluated")
    skip_nonfinite_steps: bool = cfield(True, help="skip an update whose OFS loss is NaN/inf")
    per_device_train_batch_size: int = cfield(8, ge=1, help="pairs per step and process")
    per_device_eval_batch_size: int = cfield(8, ge=1, help="pairs per evaluation batch")
    gradient_accumulation_steps: int = cfield(1, ge=1, help="micro-batches per optimiser step")
    num_train_epochs: float = cfield(1.0, gt=0, help="passes over the stream (1 = online)")
    max_steps: int = cfield(-1, ge=-1, help="optimiser steps (-1: from num_train_epochs)")
    max_length: int | None = cfield(None, ge=1, help="truncate prompt + completion (null: trl default 1024)")
    warmup_steps: float = cfield(0.1, ge=0, help="linear warm-up; < 1 is a ratio of the steps")
    weight_decay: float = cfield(0.0, ge=0, help="AdamW weight decay")
    max_grad_norm: float = cfield(1.0, gt=0, help="gradient clipping over both adapters")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = cfield(
        "linear", help="learning-rate schedule"
    )
    bf16: bool | None = cfield(None, help="bf16 mixed precision (null: trl default)")
    gradient_checkpointing: bool | None = cfield(
        None, help="activation checkpointing (null: trl default, on)"
    )
    precompute_ref_log_probs: bool = cfield(False, help="compute reference log-probs once before training")
    logging_steps: float = cfield(10, gt=0, help="log every N steps")
    save_strategy: Literal["no", "steps", "epoch"] = cfield("no", help="trl checkpoints inside a domain")
    save_steps: float = cfield(500, gt=0, help="save_strategy=steps: every N steps")
    save_total_limit: int | None = cfield(None, ge=1, help="keep at most N checkpoints")
    use_cpu: bool = cfield(False, help="train on CPU even when a GPU is present")
    disable_tqdm: bool | None = cfield(None, help="no trl progress bars")
    extra: dict[str, Any] = cfield(
        default_factory=dict, help="any other OFSDPOConfig / DPOConfig / TrainingArguments field, by name"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from dataclasses import fields as dc_fields

        valid = {f.name for f in dc_fields(OFSDPOConfig) if f.init} - {"output_dir", "seed"}
        mine = {f.name for f in dc_fields(self)} - {"extra"}
        unknown = sorted(k for k in self.extra if k not in valid or k in mine)
        if unknown:
            raise ConfigError(
                f"train.extra: {unknown} are not OFSDPOConfig fields or are set as train.<key> directly"
            )
        for k, v in self.extra.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"train.extra.{k}={v}: must be a finite number")

    def to_kwargs(self) -> dict[str, Any]:
        """``OFSDPOConfig`` keyword arguments: every non-null field plus ``extra``."""
        from dataclasses import fields as dc_fields

        out = {f.name: getattr(self, f.name) for f in dc_fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


@dataclass
class ExperimentConfig(Config):
    """One experiment: in-domain (``setting=in_domain``) or cross-domain continual (``cross_domain``)."""

    name: str = cfield("experiment", help="run name (results go to <output_dir>/<name>)")
    setting: Literal["in_domain", "cross_domain"] = cfield(
        "in_domain", help="in_domain: first domain only; cross_domain: all domains in order"
    )
    methods: list[str] = cfield(
        default_factory=lambda: ["dpo", "ofs"],
        help=f"in_domain: {list(IN_DOMAIN_METHODS)}; cross_domain: {list(CONTINUAL_METHODS)}",
    )
    seeds: list[int] = cfield(default_factory=lambda: [0], help="one run per seed and method")
    output_dir: str = cfield("results/ofs-dpo", help="results folder (--out sets it)")
    model: ModelSettings = cfield(default_factory=ModelSettings, help="policy backbone")
    lora: LoraSettings = cfield(default_factory=LoraSettings, help="LoRA of both modules")
    data: DataSettings = cfield(default_factory=DataSettings, help="preference domains")
    train: TrainSettings = cfield(default_factory=TrainSettings, help="training arguments")
    continual: ContinualSettings = cfield(default_factory=ContinualSettings, help="COFS-DPO and baselines")
    eval: EvalSettings = cfield(default_factory=EvalSettings, help="metrics")
    probe_every: int = cfield(0, ge=0, help="record gradient weights on a probe set every N steps (0: off)")

    def __post_init__(self) -> None:
        super().__post_init__()
        valid = IN_DOMAIN_METHODS if self.setting == "in_domain" else CONTINUAL_METHODS
        bad = [m for m in self.methods if m not in valid]
        if bad or not self.methods:
            raise ConfigError(
                f"unknown method(s) {bad or '(none)'} for setting {self.setting!r}; valid: {list(valid)}"
            )
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed")
        if "imdb" in self.data.domains and not self.eval.sentiment_model:
            raise ConfigError(
                "the imdb domain needs eval.sentiment_model (e.g. lvwerra/distilbert-imdb) to label pairs"
            )
