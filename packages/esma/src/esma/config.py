"""Typed configs for every ``esma`` command, validated when built (:class:`papers_shared.config.Config`).

One top-level :class:`EsmaExperimentConfig` (a paper table: source model, targets, and one section per
stage) serves every command and every shipped YAML, the quick reproduction's included (its ``quick``
section). Defaults follow the official code (gjq100/ESMA at commit eff2015) and the paper (Gao et al.,
NeurIPS 2023); choices of ours are fields marked "(ours)"; quirks of the official code are ``legacy_*``
switches, off by default, switched on by the paper-table YAMLs where they reproduce the official run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from papers_shared.attacks import MODEL_REGISTRY
from papers_shared.config import Config, ConfigError, field
from papers_shared.data import TTP_TARGETS

__all__ = [
    "DIGITS_MODELS",
    "EsIterativeConfig",
    "EsmaExperimentConfig",
    "EvalConfig",
    "GeneratorConfig",
    "PretrainConfig",
    "QuickConfig",
    "SOURCE_MODELS",
    "ScreeningConfig",
    "TTPConfig",
    "TrainConfig",
]

#: tiny classifiers of the offline digits stand-in (``dataset: digits``)
DIGITS_MODELS = ("tiny_cnn", "tiny_cnn_wide", "tiny_mlp")
#: every model name a config may use as source or victim
SOURCE_MODELS = (*MODEL_REGISTRY, *DIGITS_MODELS)
ANCHOR_KINDS = ("easy", "hard", "random")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_channels(ch: int, ch_mult: list[int], groups: int, where: str) -> None:
    for c in (ch, *(ch * m for m in ch_mult)):
        if c % groups:
            raise ConfigError(
                f"{where}: GroupNorm with {groups} groups needs every channel count divisible by {groups}; "
                f"ch={ch}, ch_mult={ch_mult} gives {c}"
            )


@dataclass
class GeneratorConfig(Config):
    """The conditional UNet ``G(x, k)`` (official ``Train_Gen/Generator.py:Generator``)."""

    ch: int = field(32, ge=1, help="base channel width")
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 3, 4], ge=1, help="width multiplier per level")
    num_res_blocks: int = field(1, ge=1, help="ResBlocks per level on the way down (+1 on the way up)")
    gn_groups: int = field(16, ge=1, help="GroupNorm groups everywhere")
    legacy_padding_idx: bool = field(
        False, help="official quirk: Embedding(padding_idx=0), target 0's embedding row fixed at zero"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_channels(self.ch, self.ch_mult, self.gn_groups, "generator")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class ScreeningConfig(Config):
    """Easy-sample screening (official ``Train_Gen/Sample_screening.py``); anchors = mean easy logits."""

    q: int = field(2, ge=1, help="threshold = q-th (0-based) smallest distinct loss / gradient norm")
    kind: Literal["easy", "hard", "random"] = field(
        "easy", help="easy anchors (ESMA) or the hard / random controls (ours)"
    )
    fallback: Literal["lowest_loss", "error"] = field(
        "lowest_loss", help="empty easy set: use the q lowest-loss samples with a warning (ours), or fail"
    )
    grad_wrt: Literal["normalized", "pixel"] = field(
        "normalized", help="input-gradient norm w.r.t. the normalised network input (official) or pixels"
    )
    batch_size: int = field(64, ge=1, help="screening batch size (the official code uses 64)")
    seed: int = field(0, ge=0, help="seed of the random-anchor control")
    legacy_screening_boundary: bool = field(
        False,
        help="official admission rule: thresholds from the batched pass, each sample re-run as a "
        "batch of one and compared with them (float noise can admit the q-th sample)",
    )


@dataclass
class PretrainConfig(Config):
    """Stage 1: target-embedding pretraining (official ``Train_Gen/train.py:train``, no-weights branch)."""

    steps: int = field(15000, ge=0, help="full-batch AdamW steps (official: 15000)")
    lr: float = field(1.5e-5, gt=0, help="AdamW learning rate (official at eff2015: 1.5e-5)")
    weight_decay: float = field(5e-5, ge=0, help="AdamW weight decay")
    dist_weight: float = field(1.0, ge=0, help="weight of the distance-matrix divergence")
    cos_weight: float = field(5.0, ge=0, help="weight of the cosine-matrix divergence")
    norm_weight: float = field(0.01, ge=0, help="weight of the Frobenius norm of each conditioning matrix")
    legacy_accumulate_grads: bool = field(
        False, help="official quirk: the stage-1 loop never zeroes gradients (AdamW sees their running sum)"
    )


@dataclass
class TrainConfig(Config):
    """Stage 2: generator training with easy-sample matching (official ``Train_Gen/Trainer.py``)."""

    eps_train: float = field(10 / 255, gt=0, le=1, help="L-inf budget of the training projection")
    lr: float = field(1e-4, gt=0, help="AdamW learning rate")
    weight_decay: float = field(5e-5, ge=0, help="AdamW weight decay")
    batch_size: int = field(25, ge=1, help="global batch size (split across processes under torchrun)")
    epochs: int = field(300, ge=1, help="passes over the target-class training images")
    ckpt_every: int = field(10, ge=1, help="checkpoint every this many epochs")
    smoothing: bool = field(True, help="3x3 Gaussian smoothing of the generator output")
    beta: float = field(1.0, gt=0, help="SmoothL1 transition point")
    num_workers: int = field(4, ge=0, help="DataLoader worker processes")
    max_steps: int | None = field(None, ge=1, help="stop after this many steps (ours; tests, quick runs)")
    legacy_double_normalize: bool = field(
        False,
        help="intermediate official commit c31a5a2 only: normalise the adversarial images twice "
        "(reverted in 64fbf04; HEAD eff2015 normalises once)",
    )
    crop_scale: list[float] = field(
        default_factory=lambda: [0.8, 1.0], gt=0, le=1, help="RandomResizedCrop area range"
    )
    grayscale_p: float = field(0.2, ge=0, le=1, help="RandomGrayscale probability")
    erasing_p: float = field(0.5, ge=0, le=1, help="RandomErasing probability")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.crop_scale) != 2 or self.crop_scale[0] > self.crop_scale[1]:
            raise ConfigError(f"train.crop_scale must be [low, high] with low <= high, got {self.crop_scale}")


@dataclass
class EvalConfig(Config):
    """10-target sub-source evaluation (official ``Train_Gen/transfer_test.py``)."""

    eps: float = field(16 / 255, gt=0, le=1, help="L-inf budget at test time")
    victims: list[str] = field(
        default_factory=lambda: [
            "resnet50",
            "resnet152",
            "vgg19_bn",
            "densenet121",
            "inception_resnet_v2",
            "inception_v3",
            "inception_v4",
            "adv_inception_v3",
            "ens_adv_inception_resnet_v2",
            "vit_base_patch16_224",
        ],
        help=f"victim models (the source is skipped); names from {list(SOURCE_MODELS)}",
    )
    batch_size: int = field(50, ge=1, help="evaluation batch size (official: 50)")
    protocol: Literal["ttp-sub-source", "all-source"] = field(
        "ttp-sub-source", help="which val images are attacked towards each target"
    )
    include_white_box: bool = field(True, help="also score the source model on its own examples")
    precision: Literal["fp32", "bf16"] = field(
        "fp32", help="generator inference precision; how bf16 runs: eval.bf16_mode (ours)"
    )
    bf16_mode: Literal["auto", "autocast", "weights"] = field(
        "auto",
        help="how precision=bf16 runs the generator (ours): autocast = fp32 weights under autocast, cast to "
        "bf16 on every call (normalisation parameters stay fp32); weights = a cached bf16 copy of the "
        "weights fed bf16 images, normalisation parameters in bf16 too; auto = weights on CUDA, autocast "
        "elsewhere",
    )
    channels_last: bool = field(
        False, help="run the generator (a cached copy) and its input in channels_last memory format (ours)"
    )
    compile: bool = field(False, help="torch.compile the generator for inference (ours)")


@dataclass
class TTPConfig(Config):
    """TTP baseline (Naseer et al., ICCV 2021): one ResNet generator per target."""

    ngf: int = field(64, ge=1, help="generator base width")
    n_blocks: int = field(6, ge=1, help="residual blocks")
    lr: float = field(2e-4, gt=0, help="Adam learning rate")
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999], ge=0, lt=1, help="Adam betas")
    batch_size: int = field(20, ge=1, help="global batch size")
    epochs: int = field(20, ge=1, help="epochs")
    eps_train: float = field(10 / 255, gt=0, le=1, help="L-inf budget during training")
    smoothing: bool = field(True, help="3x3 Gaussian smoothing of the generator output")
    max_steps: int | None = field(None, ge=1, help="stop after this many steps (ours)")
    legacy_similarity_norm: bool = field(
        False, help="TTP code: Gram matrix divided by one scalar instead of cosine similarities"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.betas) != 2:
            raise ConfigError(f"ttp.betas must hold two values, got {self.betas}")


@dataclass
class EsIterativeConfig(Config):
    """ "Easy samples help existing attacks": iterative attacks whose loss matches anchor logits (ours)."""

    attack: Literal["mi", "dtmi", "logit"] = field("dtmi", help="MI-FGSM, DI-TI-MI, or the Logit attack")
    steps: int = field(300, ge=1, help="attack iterations")
    alpha: float = field(2 / 255, gt=0, le=1, help="step size")
    kinds: list[str] = field(
        default_factory=lambda: ["easy", "random", "hard"], help="anchor kinds compared: easy, random, hard"
    )
    include_baseline_loss: bool = field(True, help="also run the attack with its own loss (CE / logit)")
    max_images_per_target: int | None = field(None, ge=1, help="attack at most this many images per target")
    batch_size: int = field(25, ge=1, help="attack batch size")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [k for k in self.kinds if k not in ANCHOR_KINDS]
        if bad or not self.kinds:
            raise ConfigError(
                f"es.kinds must be a non-empty subset of {list(ANCHOR_KINDS)}, got {self.kinds}"
            )


@dataclass
class QuickConfig(Config):
    """The digits quick reproduction (``esma quick``): premise, anchor ablation, tiny generator.

    The defaults are the CPU-budget version (8x8 digits, 30 attacked images per target, the tiny
    generators on ``gen_seeds`` only, batch 32); :meth:`full` gives the larger sizes (16x16, every test
    image, generators on every seed at batch 64), ``esma quick --full``.
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], ge=0, help="seeds of the whole experiment")
    size: int = field(8, ge=4, help="digits image side")
    model_epochs: int = field(15, ge=1, help="epochs of the tiny classifiers")
    model_lr: float = field(3e-3, gt=0, help="Adam learning rate of the tiny classifiers")
    source_width: int = field(16, ge=1, help="source CNN width")
    victim_width: int = field(24, ge=1, help="victim CNN width")
    mlp_hidden: int = field(128, ge=1, help="victim MLP hidden units")
    n_bins: int = field(5, ge=2, help="source-loss bins of the premise check")
    q: int = field(5, ge=1, help="screening q")
    attack_steps: int = field(50, ge=1, help="MI-FGSM steps of the anchor ablation")
    attack_eps: float = field(0.2, gt=0, le=1, help="MI-FGSM L-inf budget")
    attack_alpha: float = field(0.02, gt=0, le=1, help="MI-FGSM step size")
    attack_images: int = field(30, ge=0, help="test images attacked per target; 0 = all")
    gen_seeds: list[int] = field(default_factory=lambda: [0], ge=0, help="seeds on which generators train")
    gen_ch: int = field(16, ge=1, help="tiny generator width")
    gen_ch_mult: list[int] = field(default_factory=lambda: [1, 2], ge=1, help="tiny generator levels")
    gen_steps: int = field(300, ge=1, help="stage-2 steps of the tiny generators")
    gen_batch: int = field(32, ge=1, help="stage-2 batch size")
    gen_lr: float = field(1e-3, gt=0, help="stage-2 learning rate (ours)")
    pretrain_steps: int = field(100, ge=0, help="stage-1 steps (ours)")
    pretrain_lr: float = field(1e-3, gt=0, help="stage-1 learning rate (ours)")
    eps_gen: float = field(0.2, gt=0, le=1, help="generator L-inf budget (train and test)")
    precision_check: bool = field(True, help="also score the easy generator with bf16 inference")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_channels(self.gen_ch, self.gen_ch_mult, 16, "quick.gen")
        f = 2 ** (len(self.gen_ch_mult) - 1)
        if self.size % f:
            raise ConfigError(f"quick.size={self.size} must be divisible by {f} (the generator downsamples)")
        bad = [s for s in self.gen_seeds if s not in self.seeds]
        if bad:
            raise ConfigError(f"quick.gen_seeds {bad} are not among quick.seeds {self.seeds}")

    def full(self) -> QuickConfig:
        """The larger variant of this config (``esma quick --full``)."""
        from dataclasses import replace

        return replace(
            self, size=16, model_epochs=20, attack_images=0, gen_seeds=list(self.seeds), gen_batch=64
        )


@dataclass
class EsmaExperimentConfig(Config):
    """One paper table: a source model, the 10 TTP targets, screening -> stage 1 -> stage 2 -> eval.

    ``dataset="imagenet"`` reads ``imagenet_root/{train,val}/<wnid>/...``; ``dataset="digits"`` is the
    offline sklearn-digits stand-in (tiny CNN source; CLI smoke tests).
    """

    name: str = field("esma_resnet50", help="run name: outputs go to out_dir/name")
    dataset: Literal["imagenet", "digits"] = field("imagenet", help="ImageNet folders or offline digits")
    imagenet_root: str = field("data/imagenet", help="folder with train/ and val/ (one sub-folder per wnid)")
    source: str = field("resnet50", choices=SOURCE_MODELS, help="white-box source (surrogate) model")
    preprocessing: Literal["native", "paper"] = field(
        "native", help="each model's own preprocessing, or 224 + ImageNet statistics for all (official)"
    )
    pretrained: bool = field(True, help="load pretrained classifier weights (never downloaded)")
    class_ids: list[int] = field(default_factory=lambda: list(TTP_TARGETS), ge=0, help="target classes")
    image_size: int = field(224, ge=8, help="crop size")
    resize: int = field(256, ge=8, help="resize before the centre crop")
    out_dir: str = field("runs/esma", help="output folder (--out)")
    device: str = field("auto", help="auto, cpu, cuda, cuda:N or mps (under torchrun: cuda:<local rank>)")
    seed: int = field(0, ge=0, help="seed of data order, target draws and initialisation")
    digits_size: int = field(16, ge=4, help="digits image side (dataset=digits)")
    digits_source_epochs: int = field(15, ge=1, help="epochs of the tiny digits classifiers (dataset=digits)")
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, help="generator architecture")
    screening: ScreeningConfig = field(default_factory=ScreeningConfig, help="easy-sample screening")
    pretrain: PretrainConfig = field(default_factory=PretrainConfig, help="stage 1")
    train: TrainConfig = field(default_factory=TrainConfig, help="stage 2")
    eval: EvalConfig = field(default_factory=EvalConfig, help="transfer evaluation")
    ttp: TTPConfig = field(default_factory=TTPConfig, help="TTP baseline")
    es: EsIterativeConfig = field(default_factory=EsIterativeConfig, help="+ES iterative attacks")
    quick: QuickConfig = field(default_factory=QuickConfig, help="the digits quick reproduction")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device={self.device!r}: use auto, cpu, mps, cuda or cuda:N")
        n = 10 if self.dataset == "digits" else 1000
        if not self.class_ids or len(set(self.class_ids)) != len(self.class_ids):
            raise ConfigError(f"class_ids must be distinct and non-empty, got {self.class_ids}")
        if max(self.class_ids) >= n:
            raise ConfigError(
                f"class_ids must lie in [0, {n}) for dataset={self.dataset}, got {self.class_ids}"
            )
        allowed = DIGITS_MODELS if self.dataset == "digits" else tuple(MODEL_REGISTRY)
        for key, names in (("source", [self.source]), ("eval.victims", self.eval.victims)):
            bad = [m for m in names if m not in allowed]
            if bad:
                raise ConfigError(
                    f"{key}: {bad} cannot be used with dataset={self.dataset}; use {list(allowed)}"
                )
        size = self.digits_size if self.dataset == "digits" else self.image_size
        f = self.generator.downsample_factor
        if size % f:
            raise ConfigError(
                f"image side {size} must be divisible by {f}, the generator's downsampling "
                f"(2^(len(generator.ch_mult) - 1))"
            )
        if self.dataset == "imagenet" and self.resize < self.image_size:
            raise ConfigError(f"resize={self.resize} must be >= image_size={self.image_size}")

    @property
    def run_dir(self) -> str:
        """``out_dir/name``: where the commands write."""
        return f"{self.out_dir.rstrip('/')}/{self.name}"
