"""Typed configs (dataclasses) with the spec's defaults; YAML + ``key=value`` overrides via
:func:`papers_shared.config.load_config`.

Official-code quirks are ``legacy_*`` switches, off by default (package contract); the paper-table
configs under ``configs/`` switch them on to mimic the official run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from papers_shared.data import TTP_TARGETS

__all__ = [
    "EsIterativeConfig",
    "EsmaExperimentConfig",
    "EvalConfig",
    "GeneratorConfig",
    "PretrainConfig",
    "QuickConfig",
    "ScreeningConfig",
    "TTPConfig",
    "TrainConfig",
]


@dataclass
class GeneratorConfig:
    """Spec §3.3. ``legacy_padding_idx``: target index 0 has a permanently zero embedding row."""

    ch: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    num_res_blocks: int = 1
    gn_groups: int = 16
    legacy_padding_idx: bool = False


@dataclass
class ScreeningConfig:
    """Spec §3.2. ``kind``: easy anchors (ESMA) or the hard / random controls (spec §3.7)."""

    q: int = 2
    kind: Literal["easy", "hard", "random"] = "easy"
    fallback: Literal["lowest_loss", "error"] = "lowest_loss"  # [ours] when the easy set is empty
    grad_wrt: Literal["normalized", "pixel"] = "normalized"
    batch_size: int = 64
    seed: int = 0  # random-anchor control only


@dataclass
class PretrainConfig:
    """Spec §3.4 (stage 1). ``legacy_accumulate_grads``: the official loop never zeroes gradients."""

    steps: int = 15000
    lr: float = 1.5e-5
    weight_decay: float = 5e-5
    dist_weight: float = 1.0
    cos_weight: float = 5.0
    norm_weight: float = 0.01
    legacy_accumulate_grads: bool = False


@dataclass
class TrainConfig:
    """Spec §3.5 (stage 2)."""

    eps_train: float = 10 / 255
    lr: float = 1e-4
    weight_decay: float = 5e-5
    batch_size: int = 25
    epochs: int = 300
    ckpt_every: int = 10
    smoothing: bool = True
    beta: float = 1.0
    num_workers: int = 4
    max_steps: int | None = None  # stop early (tests, quick runs); None = full epochs
    legacy_double_normalize: bool = False  # official trainer normalises the adversarial images twice
    # augmentation of the ImageNet training images (spec §3.5)
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    grayscale_p: float = 0.2
    erasing_p: float = 0.5


@dataclass
class EvalConfig:
    """Spec §5: 10-target sub-source protocol on ImageNet val."""

    eps: float = 16 / 255
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
        ]
    )
    batch_size: int = 50
    protocol: Literal["ttp-sub-source", "all-source"] = "ttp-sub-source"
    include_white_box: bool = True


@dataclass
class TTPConfig:
    """TTP baseline (Naseer et al., ICCV 2021; spec §4): one ResNet generator per target."""

    ngf: int = 64
    n_blocks: int = 6
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    batch_size: int = 20
    epochs: int = 20
    eps_train: float = 10 / 255
    smoothing: bool = True
    max_steps: int | None = None
    legacy_similarity_norm: bool = False  # TTP code: Gram matrix / one scalar instead of cosine


@dataclass
class EsIterativeConfig:
    """Spec §3.7 / §4: "easy samples help existing attacks" -- instance-specific targeted attacks whose
    loss matches easy / random / hard anchor logits, against the attack's own loss."""

    attack: Literal["mi", "dtmi", "logit"] = "dtmi"
    steps: int = 300
    alpha: float = 2 / 255
    kinds: list[str] = field(default_factory=lambda: ["easy", "random", "hard"])
    include_baseline_loss: bool = True
    max_images_per_target: int | None = None
    batch_size: int = 25


@dataclass
class EsmaExperimentConfig:
    """One paper table: a source model, the 10 TTP targets, screening -> stage 1 -> stage 2 -> eval.

    ``dataset="imagenet"`` reads ``imagenet_root/{train,val}/<wnid>/...``; ``dataset="digits"`` is the
    offline sklearn-digits stand-in (tiny CNN source, used by the CLI smoke tests).
    """

    name: str = "esma_resnet50"
    dataset: Literal["imagenet", "digits"] = "imagenet"
    imagenet_root: str = "data/imagenet"
    source: str = "resnet50"
    preprocessing: Literal["native", "paper"] = "native"
    pretrained: bool = True
    class_ids: list[int] = field(default_factory=lambda: list(TTP_TARGETS))
    image_size: int = 224
    resize: int = 256
    out_dir: str = "runs/esma"
    device: str = "auto"
    seed: int = 0
    digits_size: int = 16  # dataset="digits" only
    digits_source_epochs: int = 15  # dataset="digits" only: epochs of the tiny CNN source model
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttp: TTPConfig = field(default_factory=TTPConfig)
    es: EsIterativeConfig = field(default_factory=EsIterativeConfig)


@dataclass
class QuickConfig:
    """Digits quick reproduction (spec §8 "small real experiment").

    The defaults are the CPU-budget version (8x8 digits, 30 attacked images per target, the tiny
    generators on ``gen_seeds`` only, batch 32); :meth:`full` gives the spec's sizes (16x16, every test
    image, 300 generator steps at batch 64 on every seed).
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    size: int = 8
    model_epochs: int = 15
    model_lr: float = 3e-3
    source_width: int = 16
    victim_width: int = 24
    mlp_hidden: int = 128
    n_bins: int = 5
    # (b) anchor ablation with MI-FGSM
    q: int = 5
    attack_steps: int = 50
    attack_eps: float = 0.2
    attack_alpha: float = 0.02
    attack_images: int = 30  # test images attacked per target; 0 = all
    # (c) tiny ESMA generator, easy bank vs hard bank
    gen_seeds: list[int] = field(default_factory=lambda: [0])
    gen_ch: int = 16
    gen_ch_mult: list[int] = field(default_factory=lambda: [1, 2])
    gen_steps: int = 300
    gen_batch: int = 32
    gen_lr: float = 1e-3
    pretrain_steps: int = 100
    pretrain_lr: float = 1e-3
    eps_gen: float = 0.2

    @classmethod
    def full(cls) -> QuickConfig:
        return cls(size=16, model_epochs=20, attack_images=0, gen_seeds=[0, 1, 2], gen_batch=64)
