"""Typed configs of the experiments (read with ``papers_shared.config.load_config``; every [ours] choice
of the spec is a field with the spec's default).

* :class:`ModelConfig` -> :class:`~smr_ssm.models.SSMConfig` (spec §3.8 defaults).
* :class:`TrainConfig`: AdamW with the S4 parameter groups of spec §3.7, schedule, checkpoints.
* :class:`LMConfig` (WikiText-103, spec §5 R2), :class:`LRAConfig` (LRA tasks, R1),
  :class:`NSSConfig` (sampling-shift experiment of spec §8, R4), :class:`BenchConfig` (R3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BenchConfig", "LMConfig", "LRAConfig", "ModelConfig", "NSSConfig", "TrainConfig"]


@dataclass
class ModelConfig:
    """Backbone settings; ``smr`` is a preset name (``"default"``, ``"literal"``, ``"no_replay"``,
    ``"conv_only"`` ...), a dict of SMR options, or ``None`` for the baseline without SMR (spec §4)."""

    layer_type: str = "s4d"
    d_model: int = 512
    n_layer: int = 8
    d_state: int | None = None
    smr: Any = "default"
    smr_position: str = "pre_proj"
    dropout: float = 0.0
    norm: str = "layernorm"
    prenorm: bool = True
    mixer_output: str = "auto"
    ffn: str = "none"
    ffn_expand: int = 4
    bidirectional: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    d_conv: int = 4
    expand: int = 2
    dt_rank: Any = "auto"
    scan_backend: str = "auto"
    s5_blocks: int = 1
    mega_chunk: int | None = None
    mega_attention: bool = True
    spade_window: int = 128
    n_heads: int = 4
    tie_embeddings: bool = True

    def to_hf(self, **extra: Any):
        """The :class:`~smr_ssm.models.SSMConfig` of this backbone (``extra``: vocab/heads fields)."""
        from smr_ssm.models import SSMConfig

        return SSMConfig(**asdict(self), **extra)


@dataclass
class TrainConfig:
    """Optimiser and loop (spec §3.7): AdamW; SSM core parameters (``log_dt``, ``A``) in a group with lr
    ``ssm_lr`` (``None`` = ``min(lr, 1e-3)``) and no weight decay; SMR memories at the main lr with
    ``smr_weight_decay`` (0, [ours]); norms/biases/embeddings without decay unless ``decay_all``."""

    lr: float = 5e-4
    weight_decay: float = 0.1
    ssm_lr: float | None = None
    smr_weight_decay: float = 0.0
    decay_all: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_frac: float = 0.01
    min_lr_ratio: float = 0.0
    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_batches: int | None = None
    eval_batch_size: int | None = None
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    bf16: bool = False


@dataclass
class LMConfig:
    """WikiText-103 language modelling (spec §5; table R2). ``tokenizer`` is an HF tokenizer id (needs
    the local HF cache offline) or ``"byte"`` (built-in UTF-8 bytes, no download). ``trainer`` picks the
    package trainer or ``transformers.Trainer``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: str = "Salesforce/wikitext"
    dataset_config: str = "wikitext-103-raw-v1"
    data_dir: str | None = None
    tokenizer: str = "gpt2"
    context: int = 1024
    eval_split: str = "test"
    eval_stride: int | None = None
    cache_dir: str | None = None
    trainer: str = "package"
    out_dir: str = "runs/lm"


@dataclass
class LRAConfig:
    """One Long Range Arena task (spec §5; table R1). ``data_dir`` holds the LRA release (``lra_release``
    unpacked) or, for ``image``, CIFAR-10; ``text`` reads IMDb through HF datasets."""

    task: str = "listops"
    data_dir: str = "data/lra_release"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_length: int | None = None
    pooling: str = "mean"
    val_fraction: float = 0.1
    split_seed: int = 42
    out_dir: str = "runs/lra"


@dataclass
class NSSConfig:
    """Sampling-shift (non-stable state) experiment of spec §8: sums of 3 sines sampled at step
    ``base_step``; one-step-ahead regression; tested on the same grid, uniform grids ``test_steps`` and a
    jittered grid (``Delta_k ~ base_step * U[1 - jitter, 1 + jitter]``). ``oracle_timesteps`` feeds both
    models the true relative steps ``Delta_k / base_step`` (training and test): the "S5 with true
    per-step Delta_k" upper bound of spec §4, which uses information SMR never sees."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    n_train: int = 4096
    n_test: int = 256
    norm_sequences: int = 32
    length: int = 256
    base_step: float = 0.02
    test_steps: list[float] = field(default_factory=lambda: [0.03, 0.015])
    jitter: float = 0.5
    n_components: int = 3
    freq_range: tuple[float, float] = (0.5, 3.0)
    amp_range: tuple[float, float] = (0.5, 1.0)
    layer_type: str = "s4d"
    d_model: int = 32
    n_layer: int = 2
    d_state: int = 32
    smr: Any = "default"
    oracle_timesteps: bool = False
    workers: int = 2
    out_dir: str = "runs/nss"


@dataclass
class BenchConfig:
    """Training-speed microbenchmark (spec §5 R3, §8 second quick check)."""

    layers: list[str] = field(default_factory=lambda: ["s4d", "s4d+smr"])
    lengths: list[int] = field(default_factory=lambda: [1024, 4096])
    d_model: int = 64
    d_state: int = 64
    batch_size: int = 4
    repeats: int = 7
    warmup: int = 2
    out: str | None = None
