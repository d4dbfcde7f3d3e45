"""Typed configs (spec §3.8 defaults). ``[ours]`` marks choices the paper and code leave open.

:class:`OptimConfig` configures one training method (STE, a MetaQuant hypernetwork, FSG);
:class:`ExperimentConfig` a whole run (model, quantizer, data, schedule, optimizer) and is what the
YAML files under ``configs/`` describe (``fsg-bnn train --config configs/x.yaml key=value ...``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BASE_OPTIMIZERS",
    "DataConfig",
    "ExperimentConfig",
    "METAQUANT_METHODS",
    "METHODS",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
]

Method = Literal[
    "ste",
    "fcgrad",
    "multifc",
    "lstmfc",
    "lstmfc-grad",
    "lstmfc-merge",
    "lstmfc-momentum",
    "mamba-history",
    "s4-history",
    "s5-history",
    "fsg",
]
METHODS: tuple[str, ...] = typing.get_args(Method)
METAQUANT_METHODS: tuple[str, ...] = METHODS[1:-1]
BASE_OPTIMIZERS = ("adam", "sgd", "sgd-m")


@dataclass
class OptimConfig:
    """One training method and its BNN / meta optimizers (spec §3.6, §3.8, §4).

    method: ``"ste"`` (plain STE, torch Adam/SGD), a MetaQuant meta net (``"fcgrad"``, ``"multifc"``,
        ``"lstmfc"`` and its ``-grad``/``-merge``/``-momentum`` variants, the slow-net-only
        ``"mamba-history"``/``"s4-history"``/``"s5-history"`` ablations) or ``"fsg"``.
    base_optimizer: the BNN refinement ``pi``: ``"adam"`` (old-style eps), ``"sgd"`` (identity) or
        ``"sgd-m"`` (momentum 0.9, weight decay 5e-4).
    """

    method: Method = "fsg"
    base_optimizer: Literal["adam", "sgd", "sgd-m"] = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # BNN weight decay for adam / sgd
    momentum: float = 0.9  # sgd-m only
    sgdm_weight_decay: float = 5e-4  # sgd-m only (official SGD-M setting)
    # MetaQuant meta net (spec §4)
    meta_lr: float = 1e-3
    hidden: int = 100
    num_fc: int = 3  # MultiFC depth (-nfc); the MetaQuant paper used 2
    nonlinearity: Literal["relu", "tanh"] | None = None
    meta_weight_decay: float = 0.0
    # FSG (spec §3.2-3.6)
    alpha: float = 0.9  # weight of the slow grad
    update_mode: Literal["official", "combined"] = "official"
    fast_lr: float = 1e-2
    slow_lr: float = 1e-3
    slow_net: Literal["mamba", "lstm", "s4", "s5"] = "mamba"  # "lstm" = MetaFastAndLSTM ablation
    swap_roles: bool = False  # MetaMambaAndFC ablation: sequence net fast, MultiFC slow
    use_lre: bool = True
    hgs_length: int = 5
    hgs_layout: Literal["time_major", "coordinate"] = "time_major"  # "coordinate" is [ours]
    d_state: int = 16
    d_conv: int = 8
    expand: int = 100
    s4_d_model: int = 100
    s5_dim: int = 8
    s5_state: int = 8
    scan_backend: Literal["auto", "torch", "ref", "cuda"] = "auto"
    scan_chunk: int | None = None  # None: about sqrt(sequence length)
    # [ours] speed: run the slow net once per group of layers instead of once per layer. "exact" groups
    # layers whose HGS sequences have the same length (bit-for-bit the per-layer result); "pad"
    # right-pads all layers to one length (exact too, as the slow net is causal); "none" = per layer.
    layer_batching: Literal["exact", "pad", "none"] = "exact"
    max_batch_tokens: int = 2_000_000  # cap on batch * length of one slow-net call
    # [ours] debug flag of spec §8: fast-net input A(W) instead of A(W_meta) of the last forward
    fast_input: Literal["lookahead", "latent"] = "lookahead"
    track_sign_flips: bool = True  # [ours] log the fraction of look-ahead sign flips (spec §6)


@dataclass
class ModelConfig:
    arch: str = "resnet20"  # resnet20/32/44/56/110, or mlp
    num_classes: int = 10
    in_features: int = 64  # mlp only
    hidden: tuple[int, ...] = (32, 32)  # mlp only
    quantizer: Literal["dorefa", "bwn"] = "dorefa"
    bits: int = 1
    bwn_scale: bool | None = None  # None: as the official code (scaled for STE, plain sign for meta)


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "cifar100", "digits", "synthetic"] = "cifar10"
    root: str = "~/data"
    batch_size: int = 128
    test_batch_size: int = 100
    num_workers: int = 2
    augment: bool = True  # RandomCrop(32, 4) + HFlip for CIFAR (spec §3.8)
    download: bool = False
    synthetic_size: int = 512  # synthetic only: random 3x32x32 tensors (smoke tests, benchmarks)


@dataclass
class TrainConfig:
    epochs: int = 100
    lr_step: int = 30  # LR x lr_gamma every lr_step epochs (-ad 30)
    lr_gamma: float = 0.1
    min_lr: float = 1e-6  # stop when the LR falls below
    max_steps: int | None = None  # stop after this many binarized-training steps (smoke runs)
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/fsg-bnn"
    pretrained: str | None = None  # FP checkpoint (ours or the official Results/*-pretrain.pth)
    pretrain_epochs: int = 200  # FP pretraining when no checkpoint is given [ours: SGD-M schedule]
    pretrain_lr: float = 0.1
    pretrain_optimizer: Literal["sgd-m", "adam"] = "sgd-m"
    pretrain_lr_step: int = 60
    pretrain_weight_decay: float = 5e-4
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 2
    eval_every: int = 1


@dataclass
class ExperimentConfig:
    name: str = "fsg-bnn"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
