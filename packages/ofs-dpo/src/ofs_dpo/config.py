"""Configs: ``OFSDPOConfig(DPOConfig)`` (spec §3.11) and the experiment dataclasses read from YAML.

``OFSDPOConfig`` keeps every ``DPOConfig``/``TrainingArguments`` field and meaning (``learning_rate`` is the fast
module's η_F) and adds the OFS-DPO fields of spec §3.11; defaults that differ from trl's are the spec's:
``learning_rate=5e-5``, one pass over the stream (``num_train_epochs=1``) in order
(``train_sampling_strategy="sequential"``, the online protocol of spec §2) and ``warmup_steps=0.1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trl import DPOConfig

from ofs_dpo.losses import CHASE_MODES, SUPPORTED_LOSS_TYPES

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
]

SWAP_MODES = ("roles", "weights", "none")
EVAL_MODULES = ("leader", "fast", "slow", "both")


@dataclass
class OFSDPOConfig(DPOConfig):
    r"""Configuration of :class:`~ofs_dpo.OFSDPOTrainer`: every ``DPOConfig`` field plus the OFS-DPO ones.

    Parameters (spec §3.11; provenance in brackets):
        slow_lr_ratio (`float`, defaults to `0.1`): η_S/η_F [ours]; `1.0` is the "no speed difference" ablation.
        chase_alpha (`float`, defaults to `1.0`): weight α of L_DPO-FS [ours]; `0.0` gives two independent learners.
        chase_interval (`int`, defaults to `10`): K optimiser steps between role checks (spec §3.7) [ours].
        chase_mode (`str`, defaults to `"minmax"`): chaser objective, `"minmax"` [3p] or `"pull"` [ours] (§3.6).
        swap_mode (`str`, defaults to `"roles"`): `"roles"` [3p], `"weights"` [ours] or `"none"` (§3.7).
        identical_init (`bool`, defaults to `True`): copy the fast adapter's initial tensors into the slow one [ours].
        chase_margin_clamp (`float`, *optional*): clamp Δ = h_L − h_C to ±value in the chase term (§3.6).
        fast_adapter_name / slow_adapter_name: PEFT adapter names; the fast adapter is trl's `"default"`.
        eval_module (`str`, defaults to `"leader"`): module(s) evaluated/logged at evaluation (§3.8).
        skip_nonfinite_steps (`bool`, defaults to `True`): skip a step whose OFS loss is NaN/inf (§6) [ours].
    """

    learning_rate: float = field(
        default=5e-5, metadata={"help": "Fast-module learning rate η_F (spec §3.11)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the stream; 1 = online."})
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={
            "help": "Sampler; 'sequential' streams the data once in order (online protocol, spec §2).",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warm-up; a float < 1 is a ratio."})

    slow_lr_ratio: float = field(default=0.1, metadata={"help": "η_S / η_F (spec §3.4)."})
    chase_alpha: float = field(
        default=1.0, metadata={"help": "Weight α of the chasing regulariser L_DPO-FS."}
    )
    chase_interval: int = field(
        default=10, metadata={"help": "Optimiser steps K between role checks (§3.7)."}
    )
    chase_mode: str = field(
        default="minmax", metadata={"help": "Chaser objective (§3.6).", "choices": list(CHASE_MODES)}
    )
    swap_mode: str = field(
        default="roles", metadata={"help": "Role swap (§3.7).", "choices": list(SWAP_MODES)}
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
        default="leader", metadata={"help": "Module evaluated (§3.8).", "choices": list(EVAL_MODULES)}
    )
    skip_nonfinite_steps: bool = field(
        default=True, metadata={"help": "Skip the update when the OFS loss is NaN/inf (§6)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.slow_lr_ratio) and self.slow_lr_ratio > 0):
            raise ValueError(f"slow_lr_ratio must be a finite number > 0, got {self.slow_lr_ratio}")
        if not (math.isfinite(self.chase_alpha) and self.chase_alpha >= 0):
            raise ValueError(f"chase_alpha must be a finite number >= 0, got {self.chase_alpha}")
        if int(self.chase_interval) != self.chase_interval or self.chase_interval < 1:
            raise ValueError(f"chase_interval must be an integer >= 1, got {self.chase_interval}")
        if self.chase_mode not in CHASE_MODES:
            raise ValueError(f"chase_mode must be one of {list(CHASE_MODES)}, got {self.chase_mode!r}")
        if self.swap_mode not in SWAP_MODES:
            raise ValueError(f"swap_mode must be one of {list(SWAP_MODES)}, got {self.swap_mode!r}")
        if self.eval_module not in EVAL_MODULES:
            raise ValueError(f"eval_module must be one of {list(EVAL_MODULES)}, got {self.eval_module!r}")
        if self.chase_margin_clamp is not None and not self.chase_margin_clamp > 0:
            raise ValueError(f"chase_margin_clamp must be > 0 or None, got {self.chase_margin_clamp}")
        if self.fast_adapter_name != "default":
            raise ValueError(
                "fast_adapter_name must be 'default': trl creates, references and saves the trained adapter under "
                f"that name; got {self.fast_adapter_name!r}"
            )
        if self.slow_adapter_name in ("default", "ref", ""):
            raise ValueError(
                f"slow_adapter_name must differ from 'default' and 'ref', got {self.slow_adapter_name!r}"
            )
        unsupported = [t for t in self.loss_type if t not in SUPPORTED_LOSS_TYPES]
        if unsupported:
            raise ValueError(
                f"loss_type {unsupported} is not supported by OFS-DPO; supported: {list(SUPPORTED_LOSS_TYPES)}"
            )
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                "OFS-DPO supports f_divergence_type='reverse_kl' only (the chase term is reverse-KL DPO)"
            )
        if self.use_weighting:
            raise ValueError("use_weighting (WPO) is not supported by OFS-DPO")
        if self.sync_ref_model:
            raise ValueError(
                "sync_ref_model (TR-DPO) is not supported: the reference is the base with adapters off"
            )


# ---------------------------------------------------------------------------------------------------------------
# Experiment configs (YAML, `ofs-dpo <cmd> --config x.yaml key=value ...`)
# ---------------------------------------------------------------------------------------------------------------

IN_DOMAIN_METHODS = ("dpo", "ofs", "ofs_alpha0", "ofs_noswap", "ofs_ratio1")
CONTINUAL_METHODS = ("seq_dpo", "seq_ofs", "cofs", "merge_dpo", "joint_dpo")


@dataclass
class ModelSettings:
    """Policy backbone: a hub id / local folder, or ``"tiny-gpt2"`` (a random GPT2Config model, offline)."""

    name_or_path: str = "tiny-gpt2"
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_positions: int = 64
    dtype: str = "float32"


@dataclass
class LoraSettings:
    """LoRA of both modules (spec §3.11): r 8, alpha 16, dropout 0.05, attention q/v (PEFT's per-arch default)."""

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: list[str] | str | None = None
    use_rslora: bool = False


@dataclass
class DataSettings:
    """Domains in training order: hub tasks (``tldr``, ``hh``, ``imdb``) or toy domains (``toy_a``, ``toy_b``)."""

    domains: list[str] = field(default_factory=lambda: ["toy_a"])
    n_train: int | None = 1024
    n_eval: int | None = 256
    eval_split: str = "test"
    toy_vocab: int = 40
    toy_prompt_len: int = 4
    toy_completion_len: int = 6
    data_seed: int = 0
    imdb_pairs_per_prompt: int = 1
    cache_dir: str | None = None


@dataclass
class EvalSettings:
    """Metrics (spec §5): implicit-reward accuracy always; sampled reward / win rate with a reward model."""

    reward_accuracy: bool = True
    win_rate: bool = False
    reward_model: str | None = None
    sentiment_model: str | None = None
    n_generate: int = 64
    max_new_tokens: int = 64
    batch_size: int = 16


@dataclass
class ContinualSettings:
    """COFS-DPO and continual baselines (spec §3.9, §4)."""

    weights: str | list[float] = "uniform"
    lam: float = 0.5
    combine_space: str = "param"
    init_from: str = "previous"
    reference: str = "base"
    search_step: float = 0.1
    merge_type: str = "cat"
    merge_density: float = 0.5


@dataclass
class ExperimentConfig:
    """One experiment: in-domain (``setting="in_domain"``) or cross-domain continual (``"cross_domain"``)."""

    name: str = "experiment"
    setting: str = "in_domain"
    methods: list[str] = field(default_factory=lambda: ["dpo", "ofs"])
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "results/ofs-dpo"
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: dict[str, Any] = field(default_factory=dict)
    continual: ContinualSettings = field(default_factory=ContinualSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    probe_every: int = 0

    def __post_init__(self):
        if self.setting not in ("in_domain", "cross_domain"):
            raise ValueError(f"setting must be 'in_domain' or 'cross_domain', got {self.setting!r}")
        valid = IN_DOMAIN_METHODS if self.setting == "in_domain" else CONTINUAL_METHODS
        bad = [m for m in self.methods if m not in valid]
        if bad:
            raise ValueError(f"unknown method(s) {bad} for setting {self.setting!r}; valid: {list(valid)}")
        if not self.methods:
            raise ValueError("methods is empty")
        if not self.seeds:
            raise ValueError("seeds is empty")
