"""Configs of the ``ibta`` runs, validated when built (``papers_shared.config.Config``).

Attack defaults are those of the official code (``used_attacks.py`` class defaults as ``transfer.py``
calls them, Biqing-Qi/Enhancing-Adversarial-Transferability-via-Information-Bottleneck-Constraints,
commit 6866b7a); every choice of ours is a field marked "(ours)". One top-level class,
:class:`ExperimentConfig`, serves every command: a transfer table (``ibta attack``), the IB-weight sweep
(``ibta ablate``), MINE (``ibta mine``) and the quick reproduction (its ``quick`` section).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from papers_shared.attacks import MODEL_REGISTRY
from papers_shared.config import Config, ConfigError, field
from papers_shared.data import IBTA_TARGETS

from .baselines import BASES

__all__ = [
    "ATTACK_NAMES",
    "DIGITS_MODELS",
    "EXTRA_BASELINES",
    "AttackConfig",
    "DigitsConfig",
    "ExperimentConfig",
    "MINEConfig",
    "QuickConfig",
]

#: Shared baselines beyond the X-vs-IBTA-X pairs: official RAP-LS, SSA (paper form), and others.
EXTRA_BASELINES = ("ifgsm", "sinifgsm", "admix", "vmifgsm", "rap_official", "ssa_paper")
#: Every attack name a run accepts: the baselines X, ``ibta_<X>``, and the extra baselines.
ATTACK_NAMES = tuple(BASES) + tuple(f"ibta_{b}" for b in BASES) + EXTRA_BASELINES
#: The offline digits models (surrogate ``digits_cnn``; the others are victims).
DIGITS_MODELS = ("digits_cnn", "digits_cnn_wide", "digits_mlp", "digits_ens")
MODES = ("untargeted", "targeted")


def _check_names(where: str, values: list[str], allowed: tuple[str, ...] | list[str]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{where}: unknown {bad}; choose from {list(allowed)}")


@dataclass
class AttackConfig(Config):
    """Hyper-parameters shared by every attack of a run (official-code defaults)."""

    eps: float = field(16 / 255, ge=0, le=1, help="L-inf budget in [0, 1] pixel units (16/255)")
    alpha: float = field(1.25 / 255, ge=0, le=1, help="step size in [0, 1] pixel units (1.25/255)")
    steps: int | None = field(
        None, ge=1, help="iterations; empty = the preset (20 MI/DI/TI/S2I, 300 Logit-TI, 400 RAP-Logit-TI)"
    )
    sigma: float = field(0.1, ge=0, le=1, help="noise std of the companion x~ = clip(x + sigma*xi)")
    gamma: float = field(0.1, ge=0, help="weight of the noisy-branch loss (and of KL(p~||p) by default)")
    lam: float = field(0.1, ge=0, help="weight lambda of the divergence D(z, z~)")
    gamma_kl: float | None = field(None, ge=0, help="weight of KL(p~||p); empty = gamma (the code)")
    decay: float = field(1.0, ge=0, help="momentum decay mu")
    diversity_prob: float = field(0.7, ge=0, le=1, help="DI probability")
    resize_rate: float = field(0.9, gt=0, help="DI resize rate (< 1: shrink and pad)")
    ti_kernel: int = field(5, ge=1, help="TI Gaussian kernel size")
    ti_nsig: float = field(3.0, gt=0, help="TI kernel extent in standard deviations")
    ssa_n: int = field(20, ge=1, help="S2I spectrum copies per step")
    ssa_rho: float = field(0.5, ge=0, le=1, help="S2I mask range: M ~ U[1 - rho, 1 + rho]")
    ssa_sigma: float | None = field(
        None, ge=0, help="S2I spectrum-noise std; empty = 0.1/255 (ibta_code, as transfer.py runs) or 16/255"
    )
    ssa_mode: Literal["ibta_code", "ssa_paper"] = field(
        "ibta_code", help="S2I copies: transform x then add delta (official IBTA code) or SSA's x + delta"
    )
    rap_late_start: int = field(100, ge=0, help="RAP-LS: first iteration with a reverse perturbation")
    rap_inner_steps: int = field(1, ge=0, help="RAP inner steps (official IBTA code: 1)")
    rap_alpha_n: float | None = field(None, ge=0, help="RAP inner step; empty = alpha")
    rap_eps_n: float = field(
        12 / 255, ge=0, help="RAP inner bound (ours: 12/255; never binds after one step)"
    )
    legacy_rap_eps_n: bool = field(False, help="use the official code's unscaled inner bound 12")
    clip_delta: bool = field(False, help="keep x + delta in [0, 1] after each step (official code: no)")
    fuse_branches: bool = field(
        False, help="(ours) one 2B forward for both IBTA branches (MI/DI/TI/Logit-TI)"
    )
    shared_transform: bool = field(
        False,
        help="(ours) one DI draw shared by both IB branches; the official code draws them independently",
    )
    seed: int | None = field(0, ge=0, help="attack seed (x~, DI, spectrum draws); empty = global RNG")


@dataclass
class MINEConfig(Config):
    """MINE analysis of I(delta; X) (Belghazi et al., ICML 2018; every value ours)."""

    steps: int = field(2000, ge=1, help="training steps of the statistics network")
    batch_size: int = field(256, ge=2, help="pairs per MINE step")
    lr: float = field(1e-4, gt=0, help="Adam learning rate")
    hidden: int = field(512, ge=1, help="hidden units per layer")
    depth: int = field(2, ge=0, help="hidden layers")
    ema_rate: float = field(
        0.01, gt=0, le=1, help="rate of the moving average in the bias-corrected gradient"
    )
    eval_every: int = field(5, ge=1, help="evaluate the held-out bound every k steps")
    average_last: int = field(100, ge=1, help="report the mean of the last k held-out evaluations")
    holdout_frac: float = field(0.2, gt=0, lt=1, help="fraction of pairs held out for the estimate")
    pool: int = field(16, ge=1, help="average-pool delta and x to 3 x pool x pool")
    variables: Literal["delta_x", "logits"] = field("delta_x", help="(delta, x) or (logits of x_adv, of x)")
    seed: int = field(0, ge=0, help="MINE seed (initialisation, batches, shuffles)")


@dataclass
class DigitsConfig(Config):
    """The offline stand-in for ImageNet: sklearn digits as 3-channel images, small models trained here."""

    size: int = field(16, ge=4, help="image side (a multiple of 4)")
    test_frac: float = field(0.3, gt=0, lt=1, help="held-out fraction (stratified)")
    epochs: int = field(6, ge=1, help="training epochs of every digits model")
    lr: float = field(5e-3, gt=0, help="Adam learning rate of the digits models")
    batch_size: int = field(128, ge=1, help="training batch size")
    split_seed: int = field(0, ge=0, help="seed of the train/test split")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size % 4:
            raise ConfigError(f"digits.size={self.size}: must be a multiple of 4 (two 2x2 max-pools)")


@dataclass
class QuickConfig(Config):
    """The quick reproduction on digits: X vs IBTA-X over several attack seeds, and an ablation."""

    n_attack: int = field(200, ge=1, help="test images attacked per seed")
    eps: float = field(0.15, ge=0, le=1, help="L-inf budget")
    alpha: float = field(0.02, ge=0, le=1, help="step size")
    steps: int = field(10, ge=1, help="iterations of every attack")
    rap_late_start: int = field(3, ge=0, help="RAP-LS late start (the official 100 of 400, scaled to steps)")
    families: list[str] = field(
        default_factory=lambda: ["mi", "di", "ti", "rap_logit_ti"], help=f"base attacks X, from {list(BASES)}"
    )
    lam: float = field(0.1, ge=0, help="lambda of the claims (official default 0.1)")
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3, 4, 5], ge=0, help="attack seeds of the claims"
    )
    min_wins_frac: float = field(
        0.5, ge=0, le=1, help="a claim also needs this fraction of seeds (rounded up) to win on their own"
    )
    ablation_lams: list[float] = field(
        default_factory=lambda: [1.0], ge=0, help="extra lambdas, ablation only"
    )
    ablation_seeds: int = field(3, ge=0, help="the ablation runs on the first k seeds")
    white_box_tolerance: float = field(0.05, ge=0, le=1, help="R2: IBTA-X white-box >= X - tolerance")
    mine_pool: int = field(4, ge=1, help="MINE: pool delta and x to 3 x k x k")
    mine_steps: int = field(400, ge=1, help="MINE training steps")
    mine_hidden: int = field(64, ge=1, help="MINE hidden units")
    mine_lr: float = field(1e-3, gt=0, help="MINE learning rate")
    mine_seeds: int = field(3, ge=0, help="MINE (R3) on the first k seeds")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_names("quick.families", self.families, BASES)
        if not self.seeds:
            raise ConfigError("quick.seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"quick.seeds={self.seeds}: seeds repeat")


@dataclass
class ExperimentConfig(Config):
    """A transfer-matrix run: sources x victims x attacks x modes, and the sections every command reads."""

    name: str = field("exp1_cnn", help="run name: results go to <out_dir>/<name>/results.csv")
    dataset: Literal["imagenet", "nips17", "digits"] = field("imagenet", help="data of the run")
    data_root: str = field("data/imagenet", help="ImageNet root holding <split>/<wnid>/...; NIPS'17 root")
    split: str = field("val", help="ImageNet split folder")
    class_ids: list[int] = field(
        default_factory=lambda: list(IBTA_TARGETS), ge=0, le=999, help="ImageNet classes attacked"
    )
    targets: list[int] = field(
        default_factory=lambda: list(IBTA_TARGETS), ge=0, help="targets (targeted mode)"
    )
    max_images: int | None = field(None, ge=1, help="attack only the first k images; empty = all")
    batch_size: int = field(48, ge=1, help="attack batch size")
    sources: list[str] = field(
        default_factory=lambda: ["resnet50", "resnet152", "vgg19_bn", "densenet121"], help="surrogate models"
    )
    victims: list[str] = field(
        default_factory=lambda: ["resnet50", "resnet152", "vgg19_bn", "densenet121"], help="victim models"
    )
    ensemble_members: list[str] = field(
        default_factory=lambda: ["resnet50", "inception_v3", "inception_v4"], help="members of 'ensemble'"
    )
    attacks: list[str] = field(
        default_factory=lambda: [n for b in BASES for n in (b, f"ibta_{b}")], help="attacks, by name"
    )
    modes: list[Literal["untargeted", "targeted"]] = field(
        default_factory=lambda: ["untargeted", "targeted"], help="attack modes"
    )
    preprocessing: Literal["native", "paper"] = field(
        "native", help="native: each model's own; paper: 224 px + ImageNet mean/std for all (the code)"
    )
    pretrained: bool = field(True, help="public pretrained weights")
    download: bool = field(False, help="allow torchvision/timm to download missing weights")
    weights: dict[str, str] = field(
        default_factory=dict,
        help="local weight files per model name (safetensors or a torch state dict), e.g. fine-tuned models",
    )
    device: str = field("auto", help="cpu, cuda, cuda:1 or auto")
    out_dir: str = field("runs/ibta", help="output folder")
    resume: bool = field(True, help="skip the (source, attack, mode) cells already in results.csv")
    legacy_eval_white_box_only: bool = field(
        False, help="score on the source only, as transfer.py does (it overwrites the victim list)"
    )
    sweep_lam: list[float] = field(
        default_factory=lambda: [0.0, 0.01, 0.1, 1.0], ge=0, help="ablate: lambdas"
    )
    sweep_gamma: list[float] = field(
        default_factory=lambda: [0.0, 0.1, 0.5, 1.0], ge=0, help="ablate: gammas"
    )
    sweep_sigma: list[float] = field(
        default_factory=lambda: [0.01, 0.05, 0.1, 0.2], ge=0, help="ablate: sigmas"
    )
    attack: AttackConfig = field(default_factory=AttackConfig, help="attack hyper-parameters")
    mine: MINEConfig = field(default_factory=MINEConfig, help="MINE analysis (ibta mine)")
    digits: DigitsConfig = field(default_factory=DigitsConfig, help="offline digits data and models")
    quick: QuickConfig = field(default_factory=QuickConfig, help="the quick reproduction (ibta quick)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_names("attacks", self.attacks, ATTACK_NAMES)
        _check_names("modes", list(self.modes), MODES)
        if not self.sources or not self.victims:
            raise ConfigError("sources and victims must each name at least one model")
        if not self.attacks or not self.modes:
            raise ConfigError("attacks and modes must each name at least one entry")
        if self.dataset == "digits":
            _check_names("sources", self.sources, DIGITS_MODELS)
            _check_names("victims", self.victims, DIGITS_MODELS)
            if any(t > 9 for t in self.targets):
                raise ConfigError(f"targets={self.targets}: digits has the classes 0-9")
        else:
            known = [*MODEL_REGISTRY, "ensemble"]
            for where, names in (("sources", self.sources), ("victims", self.victims)):
                other = [n for n in names if not n.startswith(("timm:", "torchvision:"))]
                _check_names(where, other, known)
            _check_names("ensemble_members", self.ensemble_members, list(MODEL_REGISTRY))
        used = {*self.sources, *self.victims}
        if "ensemble" in used:
            used |= set(self.ensemble_members)
        unused = sorted(set(self.weights) - used)
        if unused:
            raise ConfigError(f"weights names models the run does not use: {unused} (models: {sorted(used)})")
        if (
            self.dataset == "imagenet"
            and "targeted" in self.modes
            and not set(self.targets) <= set(self.class_ids)
        ):
            raise ConfigError(
                f"targets {sorted(set(self.targets) - set(self.class_ids))} are not among class_ids: the "
                "sub-source protocol attacks, per target, the images of the other attacked classes"
            )
