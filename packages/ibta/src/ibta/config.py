"""Typed configs (spec §3.7 defaults; [ours] choices are fields with the spec's default).

Load with :func:`papers_shared.config.load_config` (YAML + ``key=value`` overrides, unknown keys
raise :class:`~papers_shared.config.ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from papers_shared.data import IBTA_TARGETS

__all__ = ["AttackConfig", "DigitsConfig", "ExperimentConfig", "MINEConfig", "QuickConfig"]


@dataclass
class AttackConfig:
    """Hyper-parameters shared by every attack of a run (spec §3.7; the official code's values)."""

    eps: float = 16 / 255
    alpha: float = 1.25 / 255
    steps: int | None = None  # None: the preset (20 MI/DI/TI/S2I, 300 Logit-TI, 400 RAP-Logit-TI)
    sigma: float = 0.1  # noise std of the companion x~ (spec §3.2)
    gamma: float = 0.1
    lam: float = 0.1
    gamma_kl: float | None = None  # None: = gamma (the code uses one gamma for both roles)
    decay: float = 1.0
    diversity_prob: float = 0.7
    resize_rate: float = 0.9
    ti_kernel: int = 5
    ti_nsig: float = 3.0
    ssa_n: int = 20
    ssa_rho: float = 0.5
    ssa_sigma: float | None = None  # None: 0.1/255 (ibta_code, as run by transfer.py) / 16/255 (ssa_paper)
    ssa_mode: Literal["ibta_code", "ssa_paper"] = "ibta_code"
    rap_late_start: int = 100
    rap_inner_steps: int = 1
    rap_alpha_n: float | None = None  # None: alpha
    rap_eps_n: float = 12 / 255  # [ours]; identical to the code's unscaled 12 after one inner step
    legacy_rap_eps_n: bool = False  # True: the code's unscaled bound epsilon_n = 12 (spec §6)
    clip_delta: bool = False  # official code: delta only eps-clipped
    fuse_branches: bool = False  # [ours] one 2B forward for both IBTA branches (MI/DI/TI/Logit-TI)
    seed: int | None = 0


@dataclass
class MINEConfig:
    """MINE analysis (spec §3.6; every value [ours])."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-4
    hidden: int = 512
    depth: int = 2
    ema_rate: float = 0.01
    eval_every: int = 5
    average_last: int = 100
    holdout_frac: float = 0.2
    pool: int = 16  # average-pool delta and x to 3 x pool x pool
    variables: Literal["delta_x", "logits"] = "delta_x"
    seed: int = 0


@dataclass
class DigitsConfig:
    """The offline digits stand-in (spec §8): 3 x 16 x 16 images, small CNN/MLP models trained on the fly."""

    size: int = 16  # spec §8: 32 (budget, see README Deviations)
    test_frac: float = 0.3
    epochs: int = 6
    lr: float = 5e-3
    batch_size: int = 128
    split_seed: int = 0


@dataclass
class ExperimentConfig:
    """A transfer-matrix run: sources x victims x attacks x modes (spec §5)."""

    name: str = "exp1_cnn"
    dataset: Literal["imagenet", "nips17", "digits"] = "imagenet"
    data_root: str = "data/imagenet"  # ImageNet root holding <split>/<wnid>/...; NIPS'17 root for nips17
    split: str = "val"
    class_ids: list[int] = field(default_factory=lambda: list(IBTA_TARGETS))
    targets: list[int] = field(default_factory=lambda: list(IBTA_TARGETS))
    max_images: int | None = None
    batch_size: int = 48
    sources: list[str] = field(default_factory=lambda: ["resnet50", "resnet152", "vgg19_bn", "densenet121"])
    victims: list[str] = field(default_factory=lambda: ["resnet50", "resnet152", "vgg19_bn", "densenet121"])
    ensemble_members: list[str] = field(default_factory=lambda: ["resnet50", "inception_v3", "inception_v4"])
    attacks: list[str] = field(
        default_factory=lambda: [
            "mi",
            "ibta_mi",
            "di",
            "ibta_di",
            "ti",
            "ibta_ti",
            "s2i",
            "ibta_s2i",
            "logit_ti",
            "ibta_logit_ti",
            "rap_logit_ti",
            "ibta_rap_logit_ti",
        ]
    )
    modes: list[str] = field(default_factory=lambda: ["untargeted", "targeted"])
    preprocessing: Literal["native", "paper"] = "native"
    pretrained: bool = True
    download: bool = False
    device: str = "auto"
    out_dir: str = "runs/ibta"
    resume: bool = True
    legacy_eval_white_box_only: bool = False  # transfer.py overwrote the victims with [source] (spec §6)
    # one-at-a-time IB-weight ablation (spec §7 ablation_ib_weights.py), used by `ibta ablate`
    sweep_lam: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.1, 1.0])
    sweep_gamma: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0])
    sweep_sigma: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2])
    attack: AttackConfig = field(default_factory=AttackConfig)
    mine: MINEConfig = field(default_factory=MINEConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)


@dataclass
class QuickConfig:
    """The digits quick reproduction (spec §8 "small real experiment")."""

    n_attack: int = 300
    eps: float = 0.15
    alpha: float = 0.02
    steps: int = 10
    lams: list[float] = field(default_factory=lambda: [0.1, 1.0])
    families: list[str] = field(default_factory=lambda: ["mi", "di", "ti"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    white_box_tolerance: float = 0.05
    mine_pool: int = 4  # spec §8: 8 (budget)
    mine_steps: int = 400
    mine_hidden: int = 64
    mine_lr: float = 1e-3
    mine_seeds: int = 1  # MINE on the first k attack seeds
    digits: DigitsConfig = field(default_factory=DigitsConfig)
