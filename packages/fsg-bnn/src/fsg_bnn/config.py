"""Typed, validated configs. Defaults are the official run's (two-tiger/FSG @ 9559b30
``meta-quantize.py`` argparse defaults and ``README.md`` commands); "(ours)" marks choices the paper and
the code leave open.

:class:`OptimConfig` configures one training method (STE, a MetaQuant hypernetwork, FSG);
:class:`ExperimentConfig` a whole run (model, quantizer, data, schedule, optimizer) and is what the YAML
files under ``configs/`` describe (``fsg-bnn train --config cifar10_resnet20 key=value ...``). Every
config is validated when built (:class:`papers_shared.config.Config`), so Python, YAML, ``show-config``
and a run accept exactly the same values.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from papers_shared.config import Config, ConfigError, field

__all__ = [
    "ARCHS",
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
BaseOptimizer = Literal["adam", "sgd", "sgd-m"]
BASE_OPTIMIZERS: tuple[str, ...] = typing.get_args(BaseOptimizer)
Arch = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "mlp"]
ARCHS: tuple[str, ...] = typing.get_args(Arch)


@dataclass
class OptimConfig(Config):
    """One training method and its BNN / meta optimizers."""

    method: Method = field(
        "fsg",
        help="ste (plain STE); MetaQuant meta nets fcgrad, multifc, lstmfc[-grad|-merge|-momentum]; "
        "slow-net-only ablations mamba/s4/s5-history; fsg",
    )
    base_optimizer: BaseOptimizer = field(
        "adam", help="BNN refinement pi: adam (old-style eps), sgd (identity), sgd-m (momentum 0.9, wd 5e-4)"
    )
    lr: float = field(1e-3, ge=0.0, help="BNN learning rate eta (also the look-ahead step)")
    betas: tuple[float, float] = field((0.9, 0.999), ge=0.0, lt=1.0, help="Adam refinement betas")
    eps: float = field(1e-8, gt=0.0, help="Adam refinement eps")
    weight_decay: float = field(0.0, ge=0.0, help="BNN weight decay for adam / sgd")
    momentum: float = field(0.9, ge=0.0, lt=1.0, help="sgd-m momentum")
    sgdm_weight_decay: float = field(5e-4, ge=0.0, help="sgd-m weight decay (official SGD-M setting)")
    meta_lr: float = field(1e-3, gt=0.0, help="Adam lr of a MetaQuant meta net")
    hidden: int = field(100, ge=1, help="hidden width of MultiFC / FCGrad / LSTMFC")
    num_fc: int = field(3, ge=1, help="MultiFC depth (-nfc); the MetaQuant paper used 2")
    nonlinearity: Literal["relu", "tanh"] | None = field(
        None, help="activation between MultiFC layers (none: the net collapses to one scalar product)"
    )
    meta_weight_decay: float = field(0.0, ge=0.0, help="weight decay of the meta optimizers")
    alpha: float = field(0.9, ge=0.0, le=1.0, help="weight of the slow grad in the look-ahead mix")
    update_mode: Literal["official", "combined"] = field(
        "official",
        help="official: W.grad <- c G_fast (the code); combined: alpha G_slow + (1-alpha) c G_fast "
        "(the paper's Figure 1)",
    )
    fast_lr: float = field(1e-2, gt=0.0, help="Adam lr of the fast net")
    slow_lr: float = field(1e-3, gt=0.0, help="Adam lr of the slow net")
    slow_net: Literal["mamba", "lstm", "s4", "s5"] = field(
        "mamba", help="slow net: mamba (paper), lstm (MetaFastAndLSTM ablation), s4 / s5 ablations"
    )
    swap_roles: bool = field(False, help="MetaMambaAndFC ablation: sequence net fast, MultiFC slow")
    use_lre: bool = field(True, help="prepend the Layer Recognition Embedding token (False: LRE ablation)")
    hgs_length: int = field(5, ge=1, help="HGS window L (1: the no-HGS ablation)")
    hgs_layout: Literal["time_major", "coordinate"] = field(
        "time_major", help="time_major (the official sequence) or coordinate (ours: one series per weight)"
    )
    d_state: int = field(16, ge=1, help="slow-net SSM state size")
    d_conv: int = field(8, ge=1, help="Mamba causal conv width")
    expand: int = field(100, ge=1, help="Mamba expand (d_inner = expand, d_model = 1)")
    s4_d_model: int = field(100, ge=1, help="S4 ablation width")
    s5_dim: int = field(8, ge=1, help="S5 ablation width")
    s5_state: int = field(8, ge=1, help="S5 ablation state size")
    scan_backend: Literal["auto", "torch", "ref", "cuda"] = field(
        "auto",
        help="selective scan (papers_shared.ssm.ops): auto (mamba-ssm's kernel on CUDA, else torch), "
        "torch (the shared CPU scan), ref (sequential), cuda",
    )
    scan_chunk: int | None = field(None, ge=1, help="scan chunk length (None: backend default)")
    slow_net_refresh: int = field(
        1,
        ge=1,
        help="(ours, an approximation for speed) run the slow net every k-th step and reuse its output, "
        "detached, in between; 1 = every step, exact (every paper config)",
    )
    layer_batching: Literal["packed", "exact", "pad", "none"] = field(
        "packed",
        help="(ours, speed; all exact: the slow net runs per sequence) packed: every layer's sequence in "
        "one call, packed end to end (the compiled one-channel Mamba block on CPU); exact: one call per "
        "group of equal-length layers; pad: one call, right-padded; none: one call per layer",
    )
    max_batch_tokens: int = field(2_000_000, ge=1, help="cap on batch * length of one slow-net call")
    fast_input: Literal["lookahead", "latent"] = field(
        "lookahead", help="(ours, debug) fast-net input A(W_meta) of the last forward, or A(W)"
    )
    track_sign_flips: bool = field(True, help="(ours) log the fraction of look-ahead sign flips")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.swap_roles and self.slow_net == "lstm":
            raise ConfigError("optim.swap_roles needs a sequence slow net (mamba, s4 or s5), not lstm")


@dataclass
class ModelConfig(Config):
    arch: Arch = field("resnet20", help="CIFAR ResNet depth (He et al.) or the digits mlp")
    num_classes: int = field(10, ge=2, help="classifier outputs")
    in_features: int = field(64, ge=1, help="mlp only: input size")
    hidden: tuple[int, ...] = field((32, 32), ge=1, help="mlp only: hidden widths")
    quantizer: Literal["dorefa", "bwn"] = field("dorefa", help="forward quantizer of the weights")
    bits: int = field(1, ge=1, le=8, help="weight bits")
    bwn_scale: bool | None = field(
        None, help="BWN alpha scale; None: as the official code (scaled for STE, plain sign for meta)"
    )


@dataclass
class DataConfig(Config):
    dataset: Literal["cifar10", "cifar100", "digits", "synthetic"] = field("cifar10", help="dataset")
    root: str = field("~/data", help="dataset folder (CIFAR: the torchvision layout)")
    batch_size: int = field(
        128, ge=1, help="training batch size, global: split evenly over the processes of a torchrun run"
    )
    test_batch_size: int = field(100, ge=1, help="evaluation batch size")
    num_workers: int = field(2, ge=0, help="DataLoader workers")
    augment: bool = field(True, help="RandomCrop(32, 4) + HFlip for CIFAR (the official transforms)")
    download: bool = field(False, help="download CIFAR if absent (off: offline machines)")
    synthetic_size: int = field(512, ge=2, help="synthetic only: random 3x32x32 tensors")


@dataclass
class TrainConfig(Config):
    epochs: int = field(100, ge=1, help="binarized-training epochs")
    lr_step: int = field(30, ge=0, help="LR x lr_gamma every lr_step epochs (-ad 30; 0: constant)")
    lr_gamma: float = field(0.1, gt=0.0, le=1.0, help="LR decay factor")
    min_lr: float = field(1e-6, ge=0.0, help="stop when the LR falls below")
    max_steps: int | None = field(None, ge=1, help="stop after this many binarized steps (smoke runs)")
    seed: int = field(0, ge=0, help="random seed")
    device: str = field("auto", help="cpu, cuda, cuda:1, auto")
    out_dir: str = field("runs/fsg-bnn", help="output folder (checkpoints, result.json)")
    pretrained: str | None = field(
        None, help="FP checkpoint (ours or the official Results/*-pretrain.pth); None: pretrain"
    )
    pretrain_epochs: int = field(200, ge=1, help="(ours) FP pretraining epochs when no checkpoint is given")
    pretrain_lr: float = field(0.1, gt=0.0, help="(ours) FP pretraining lr")
    pretrain_optimizer: Literal["sgd-m", "adam"] = field("sgd-m", help="(ours) FP pretraining optimizer")
    pretrain_lr_step: int = field(60, ge=0, help="(ours) FP pretraining LR x0.1 period (0: constant)")
    pretrain_weight_decay: float = field(5e-4, ge=0.0, help="(ours) FP pretraining weight decay")
    checkpoint_every: int = field(1, ge=1, help="checkpoint period in epochs")
    keep_checkpoints: int = field(2, ge=1, help="checkpoints kept")
    eval_every: int = field(1, ge=1, help="evaluation period in epochs")
    sync_bn: bool = field(
        True,
        help="(ours) several CUDA processes: BatchNorm over the global batch (SyncBatchNorm, as one GPU); "
        "false: each GPU normalises its own share (faster); CPU processes always normalise their own",
    )


@dataclass
class ExperimentConfig(Config):
    name: str = field("fsg-bnn", help="run name")
    model: ModelConfig = field(default_factory=ModelConfig, help="backbone and quantizer")
    data: DataConfig = field(default_factory=DataConfig, help="data")
    train: TrainConfig = field(default_factory=TrainConfig, help="schedule, seed, output")
    optim: OptimConfig = field(default_factory=OptimConfig, help="training method")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model.arch == "mlp" and self.data.dataset in ("cifar10", "cifar100", "synthetic"):
            raise ConfigError(f"model.arch=mlp takes flat digits vectors, not {self.data.dataset} images")
        if self.model.arch != "mlp" and self.data.dataset == "digits":
            raise ConfigError(f"data.dataset=digits needs model.arch=mlp, not {self.model.arch}")
        want = {"cifar10": 10, "cifar100": 100, "digits": 10}.get(self.data.dataset)
        if want is not None and self.model.num_classes != want:
            raise ConfigError(
                f"{self.data.dataset} has {want} classes; model.num_classes={self.model.num_classes}"
            )
