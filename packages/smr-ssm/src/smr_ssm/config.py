"""The package's one configuration: :class:`ExperimentConfig`, validated when built.

Sections: ``model`` (:class:`ModelConfig`, the backbone of every table), ``train`` (:class:`TrainConfig`,
optimiser and loop), and one section per experiment - ``lm`` (WikiText-103), ``lra`` (Long Range Arena),
``nss`` (the sampling-shift experiment of the quick reproduction), ``bench`` (training-speed benchmark).
A command reads the sections it needs; ``experiment`` (set in every shipped YAML) says which command a
file is meant for, so that ``smr-ssm lra --config lm_wt103_s4d`` stops with a clear error. Every choice
of ours is a field; ranges and closed sets are checked by :class:`papers_shared.config.Config`.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from typing import Any, Literal

from papers_shared.config import Config, ConfigError, field

__all__ = [
    "BenchConfig",
    "ExperimentConfig",
    "LMConfig",
    "LRAConfig",
    "ModelConfig",
    "NSSConfig",
    "TrainConfig",
]

LayerType = Literal["s4d", "s4", "s5", "mamba", "mega", "mega_ema", "spade"]
NSSModel = Literal["baseline", "smr", "baseline_steps", "smr_steps"]


@dataclass
class ModelConfig(Config):
    """Backbone settings (defaults: the WikiText-103 model of the tables)."""

    layer_type: LayerType = field("s4d", help="SSM host of every block")
    d_model: int = field(512, ge=1, help="width")
    n_layer: int = field(8, ge=1, help="number of blocks")
    d_state: int | None = field(
        None, ge=1, help="state size (null: 64 for S4/S4D/S5/SPADE, 16 for Mamba and Mega's EMA)"
    )
    smr: str | dict | None = field(
        "default",
        help="SMR setting: null (the baseline without SMR), a preset (default, literal, no_replay, "
        "conv_only, sigmoid2, softplus1, silu) or a dict of StateMemoryReplay options",
    )
    smr_position: Literal["pre_proj", "scan_only"] = field(
        "pre_proj", help="Mamba only: SMR before x_proj (Delta, B, C see it) or on the scanned input only"
    )
    dropout: float = field(0.0, ge=0.0, lt=1.0, help="dropout after the mixer and the FFN")
    norm: Literal["layernorm", "rmsnorm", "none"] = field("layernorm", help="block normalisation")
    prenorm: bool = field(True, help="normalise before the mixer (else after the residual sum)")
    mixer_output: Literal["auto", "gelu_glu", "none"] = field(
        "auto", help="output stage after the mixer (auto: GELU-GLU for S4/S4D/S5/Mega-EMA, none otherwise)"
    )
    ffn: Literal["none", "mlp", "glu"] = field("none", help="feed-forward sub-block")
    ffn_expand: int = field(4, ge=1, help="FFN hidden width / d_model")
    bidirectional: bool = field(False, help="non-causal blocks (LRA)")
    dt_min: float = field(1e-3, gt=0.0, help="smallest initial step of the SSMs")
    dt_max: float = field(1e-1, gt=0.0, help="largest initial step of the SSMs")
    d_conv: int = field(4, ge=1, help="Mamba: width of the causal convolution")
    expand: int = field(2, ge=1, help="Mamba: d_inner / d_model")
    dt_rank: int | Literal["auto"] = field(
        "auto", help="Mamba: rank of the Delta projection (auto: ceil(d/16))"
    )
    scan_backend: Literal["auto", "torch", "ref", "cuda"] = field(
        "auto", help="Mamba: selective-scan backend (auto: CUDA kernel on CUDA tensors when installed)"
    )
    s5_blocks: int = field(1, ge=1, help="S5: HiPPO-N blocks of the initial state matrix")
    mega_chunk: int | None = field(None, ge=1, help="Mega: attention chunk (null: full attention)")
    mega_attention: bool = field(True, help="Mega: gated attention (false: the EMA sub-layer only)")
    spade_window: int = field(128, ge=1, help="SPADE-lite: sliding-window attention width")
    n_heads: int = field(4, ge=1, help="SPADE-lite: attention heads")
    tie_embeddings: bool = field(True, help="language model: tie the output head to the embedding")

    def __post_init__(self) -> None:
        super().__post_init__()
        from smr_ssm.smr import resolve_smr

        if self.dt_min > self.dt_max:
            raise ConfigError(f"model.dt_min={self.dt_min} is larger than model.dt_max={self.dt_max}")
        if not (self.dt_rank == "auto" or (isinstance(self.dt_rank, int) and self.dt_rank >= 1)):
            raise ConfigError(f"model.dt_rank={self.dt_rank!r}: must be 'auto' or an int >= 1")
        if self.layer_type in ("s4d", "s4", "spade") and self.d_state is not None and self.d_state % 2:
            raise ConfigError(f"model.d_state={self.d_state}: {self.layer_type} needs an even state size")
        if self.layer_type == "spade" and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}"
            )
        try:
            resolve_smr(self.smr)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.smr: {exc}") from None

    def to_hf(self, **extra: Any):
        """The :class:`~smr_ssm.models.SSMConfig` of this backbone (``extra``: vocabulary and head fields)."""
        from smr_ssm.models import SSMConfig

        return SSMConfig(**asdict(self), **extra)


@dataclass
class TrainConfig(Config):
    """Optimiser and loop. AdamW; SSM core parameters (``log_dt``, ``A``) in a group with lr ``ssm_lr``
    (null: ``min(lr, 1e-3)``) and no weight decay (the S4 convention, state-spaces/s4
    ``models/s4/s4d.py:S4DKernel.register``); SMR memories at the main lr with ``smr_weight_decay``
    (ours); norms, biases and embeddings without decay unless ``decay_all``."""

    lr: float = field(5e-4, gt=0.0, help="peak learning rate")
    weight_decay: float = field(0.1, ge=0.0, help="AdamW weight decay of the ordinary parameters")
    ssm_lr: float | None = field(None, gt=0.0, help="lr of the SSM core (null: min(lr, 1e-3))")
    smr_weight_decay: float = field(0.0, ge=0.0, help="weight decay of the SMR memories (ours: 0)")
    decay_all: bool = field(False, help="weight decay on norms, biases and embeddings too")
    betas: tuple[float, float] = field((0.9, 0.999), ge=0.0, lt=1.0, help="AdamW betas")
    schedule: Literal["cosine", "linear", "constant"] = field("cosine", help="decay after the warmup")
    warmup_frac: float = field(0.01, ge=0.0, le=1.0, help="linear warmup, as a fraction of max_steps")
    min_lr_ratio: float = field(0.0, ge=0.0, le=1.0, help="final lr / peak lr")
    max_steps: int = field(1000, ge=1, help="optimiser steps")
    batch_size: int = field(16, ge=1, help="global batch size (split across processes under torchrun)")
    grad_accum: int = field(1, ge=1, help="micro-batches per optimiser step")
    grad_clip: float = field(1.0, ge=0.0, help="gradient-norm clip (0: off)")
    eval_every: int = field(500, ge=0, help="steps between evaluations (0: only at the end)")
    eval_batches: int | None = field(None, ge=1, help="validation batches per evaluation (null: all)")
    eval_batch_size: int | None = field(None, ge=1, help="evaluation batch size (null: batch_size)")
    log_every: int = field(50, ge=1, help="steps between loss records")
    checkpoint_every: int = field(500, ge=0, help="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = field(2, ge=1, help="newest checkpoints kept")
    seed: int = field(0, ge=0, help="seed of the initialisation and the data order")
    device: str = field("auto", help="auto, cpu, cuda or cuda:N")
    bf16: bool = field(False, help="bfloat16 autocast")


@dataclass
class LMConfig(Config):
    """WikiText-103 language modelling (the paper's language-modelling table)."""

    dataset: str = field("Salesforce/wikitext", help="HF dataset id (read from the local HF cache)")
    dataset_config: str = field("wikitext-103-raw-v1", help="HF dataset configuration")
    data_dir: str | None = field(
        None, help="folder with wiki.{train,valid,test}.raw or a save_to_disk copy (null: the HF cache)"
    )
    tokenizer: str = field("gpt2", help="HF tokenizer id (local HF cache) or 'byte' (built in)")
    context: int = field(1024, ge=2, help="tokens per training window")
    eval_split: Literal["test", "validation"] = field("test", help="split of the final perplexity")
    eval_stride: int | None = field(
        None, ge=1, help="sliding-window stride of the evaluation (null: context)"
    )
    cache_dir: str | None = field(None, help="folder for the token-id cache (null: no cache)")
    trainer: Literal["package", "hf"] = field("package", help="the package trainer or transformers.Trainer")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_stride is not None and self.eval_stride > self.context:
            raise ConfigError(f"lm.eval_stride={self.eval_stride} is larger than lm.context={self.context}")


@dataclass
class LRAConfig(Config):
    """One Long Range Arena task (the paper's LRA table)."""

    task: Literal["listops", "text", "retrieval", "image", "pathfinder", "pathx"] = field(
        "listops", help="LRA task"
    )
    data_dir: str = field("data/lra_release", help="the unpacked lra_release folder (CIFAR-10 for image)")
    max_length: int | None = field(None, ge=1, help="truncate inputs (null: the task's length)")
    pooling: Literal["mean", "last"] = field("mean", help="sequence pooling before the classifier")
    val_fraction: float = field(0.1, gt=0.0, lt=1.0, help="validation share where the release has none")
    split_seed: int = field(42, ge=0, help="seed of that validation split")


@dataclass
class NSSConfig(Config):
    """The sampling-shift experiment (the quick reproduction), two tasks.

    ``observed_steps`` (default; ours): sums of sines whose sampling rate changes between and within
    sequences (``regimes`` piecewise-constant steps, relative steps ``~ U[train_steps]``); the time stamps
    are observed - each position's input is the value and the gap since the previous sample
    ``tau_k = (t_k - t_{k-1}) / base_step``; the target is the value ``horizon * base_step`` ahead in
    continuous time; observations carry noise ``noise``. Test grids: the training range and the shifted
    ``slower_steps`` / ``faster_steps`` ranges. The oracle that knows the continuous signal has MSE =
    the noise variance (the floor).

    ``uniform_grid`` (the earlier task, kept as a variant): trained on a uniform grid (step
    ``base_step``), the models never see time; one-step-ahead target; tested on uniform grids
    ``test_steps`` and a jittered grid ``Delta_k ~ base_step * U[1 - jitter, 1 + jitter]``, whose next
    step cannot be known (the floor is the oracle that knows the signal but not the next step).

    ``models``: which models are trained per seed - the host without SMR (``baseline``), with SMR
    (``smr``), and either given the true steps as per-step discretisation (``*_steps``, the upper bound
    that uses the time stamps structurally; host ``steps_host`` if set).
    """

    task: Literal["observed_steps", "uniform_grid"] = field("observed_steps", help="which task (see above)")
    models: list[NSSModel] = field(
        default_factory=lambda: ["baseline", "smr", "baseline_steps"], help="models trained per seed"
    )
    steps_host: LayerType | None = field(None, help="host of the *_steps models (null: model.layer_type)")
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], ge=0, help="seeds (one run each)")
    n_train: int = field(4096, ge=1, help="training sequences")
    n_test: int = field(256, ge=1, help="test sequences per condition")
    length: int = field(128, ge=2, help="positions per sequence")
    base_step: float = field(0.02, gt=0.0, help="reference sampling step (relative step 1)")
    n_components: int = field(3, ge=1, help="sines per signal")
    freq_range: tuple[float, float] = field((0.5, 3.0), gt=0.0, help="frequency range of the sines (Hz)")
    amp_range: tuple[float, float] = field((0.5, 1.0), gt=0.0, help="amplitude range of the sines")
    train_steps: tuple[float, float] = field((0.5, 1.5), gt=0.0, help="observed_steps: training step range")
    slower_steps: tuple[float, float] = field((1.5, 2.5), gt=0.0, help="observed_steps: shifted test range")
    faster_steps: tuple[float, float] = field((0.25, 0.5), gt=0.0, help="observed_steps: shifted test range")
    regimes: int = field(2, ge=1, help="observed_steps: piecewise-constant rate segments per sequence")
    horizon: float = field(1.0, gt=0.0, help="observed_steps: prediction horizon in units of base_step")
    noise: float = field(0.03, ge=0.0, help="observed_steps: std of the observation noise")
    test_steps: list[float] = field(
        default_factory=lambda: [0.03, 0.015], gt=0.0, help="uniform_grid: uniform test steps"
    )
    jitter: float = field(0.5, ge=0.0, lt=1.0, help="uniform_grid: relative jitter of the jittered test grid")
    norm_sequences: int = field(32, ge=0, help="sequences for the state-norm (NSS) indicator (0: skip)")
    workers: int = field(2, ge=1, help="trainings run in parallel threads (one intra-op thread each)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.models:
            raise ConfigError(
                "nss.models is empty: list at least one of baseline, smr, baseline_steps, smr_steps"
            )
        bad = [m for m in self.models if m not in typing.get_args(NSSModel)]
        if bad:
            raise ConfigError(f"nss.models: {bad} not among {list(typing.get_args(NSSModel))}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"nss.models={self.models} lists a model twice")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"nss.seeds={self.seeds}: give distinct seeds")
        for name in ("freq_range", "amp_range", "train_steps", "slower_steps", "faster_steps"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"nss.{name}=({lo}, {hi}): the lower end is larger than the upper end")
        if self.regimes > self.length:
            raise ConfigError(f"nss.regimes={self.regimes} exceeds nss.length={self.length}")


@dataclass
class BenchConfig(Config):
    """Training-speed microbenchmark: forward + backward of layers with and without SMR."""

    layers: list[str] = field(
        default_factory=lambda: ["s4d", "s4d+smr"], help="layer specs: <type>[+smr[:<preset>]]"
    )
    lengths: list[int] = field(default_factory=lambda: [1024, 4096], ge=1, help="sequence lengths")
    d_model: int = field(64, ge=1, help="channels")
    d_state: int = field(64, ge=1, help="state size")
    batch_size: int = field(4, ge=1, help="batch")
    repeats: int = field(7, ge=1, help="timed repeats (medians reported)")
    warmup: int = field(2, ge=0, help="untimed warm-up repeats")

    def __post_init__(self) -> None:
        super().__post_init__()
        from smr_ssm.experiment import parse_layer_spec

        for spec in self.layers:
            try:
                parse_layer_spec(spec)
            except ValueError as exc:
                raise ConfigError(f"bench.layers: {exc}") from None


@dataclass
class ExperimentConfig(Config):
    """Everything a command of ``smr-ssm`` reads (each command uses its own section + model + train)."""

    experiment: Literal["lm", "lra", "nss", "bench"] | None = field(
        None, help="the command this config is for (null: any)"
    )
    model: ModelConfig = field(default_factory=ModelConfig, help="backbone")
    train: TrainConfig = field(default_factory=TrainConfig, help="optimiser and loop")
    lm: LMConfig = field(default_factory=LMConfig, help="WikiText-103 language modelling")
    lra: LRAConfig = field(default_factory=LRAConfig, help="Long Range Arena")
    nss: NSSConfig = field(default_factory=NSSConfig, help="sampling-shift experiment")
    bench: BenchConfig = field(default_factory=BenchConfig, help="training-speed benchmark")
    out_dir: str = field("runs/smr-ssm", help="output folder (checkpoints, metrics, results)")

    def require(self, command: str) -> None:
        """Raise :class:`ConfigError` if this config was written for another command."""
        if self.experiment is not None and self.experiment != command:
            raise ConfigError(
                f"this config is for `smr-ssm {self.experiment}`, not `smr-ssm {command}` "
                f"(experiment={self.experiment!r}); pick a {command} config (smr-ssm list-configs)"
            )
