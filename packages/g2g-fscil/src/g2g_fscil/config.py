"""Configuration dataclasses (spec §3.7, §7).

``G2GConfig`` holds the method (interaction, memory, LGP, CAG2G, meta-training, incremental alignment);
``ExperimentConfig`` adds the data, the session protocol and the base pre-training; ``QuickConfig`` is the
digits experiment of spec §8. Every [ours] reconstruction of the spec is a field with the spec's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from papers_shared.config import ConfigError

__all__ = [
    "BACKBONES",
    "DATASETS",
    "ExperimentConfig",
    "G2GConfig",
    "METHODS",
    "QuickConfig",
    "SHARPENINGS",
    "preset",
]

BACKBONES = ("resnet12", "resnet18", "resnet20", "tiny")
SHARPENINGS = ("softabs", "abs", "softrelu", "relu", "exp", "scaledexp", "none")
REPRESENTATIONS = ("tanh", "real", "bipolar")
METHODS = ("g2g", "v2v", "ncm", "teen")
DATASETS = ("digits", "cifar100", "cub200", "imagenet_r")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class G2GConfig:
    """G2G / V2V explicit-memory FSCIL model and its training (spec §3, defaults of §3.7)."""

    # backbone and projection (spec §3.1)
    backbone: str = "resnet12"
    in_channels: int = 3
    pretrained_backbone: bool = False  # ImageNet weights for resnet18 (read from a local file only)
    backbone_weights: str | None = None  # path to a torchvision resnet18 state dict; None: torch hub cache
    feat_dim: int = 512  # d, output of g_phi
    local_pool: int | None = None  # adaptive average pool of the map to r x r before building graphs [ours]
    representation: str = "tanh"  # rho in meta-training and evaluation [V2V]
    # retrieval (spec §3.2-3.3)
    interaction: str = "g2g"  # "g2g" | "v2v"
    sharpen_train: str = "softabs"
    sharpen_eval: str = "abs"
    beta: float = 10.0
    normalize: bool = True
    alpha: float = 0.5  # node vs edge weight [ours]
    node_match: str = "aligned"  # "aligned" | "soft" [ours]
    edge_sim: str = "cosine"  # "cosine" | "frobenius" [ours]
    edge_knn: int | None = None  # keep the top-k edges per row, symmetrised [ours]
    edge_proto: str = "from_nodes"  # "from_nodes" | "mean_adj" [ours]
    node_proto: str = "mean_rho"  # "mean_rho" (spec: mean of rho(z)) | "rho_sum" (C-FSCIL write) [ours]
    # LGP (spec §3.4) [ours]
    lgp: str | None = "preserve"  # "preserve" | "anti_collapse" | None
    lambda_lgp: float = 1.0
    lgp_margin: float = 0.5
    lgp_detach_backbone: bool = True
    # CAG2G (spec §3.5) [ours]
    cag2g: bool = True
    lambda_ca: float = 0.5
    tau: float = 0.1
    n_views: int = 2
    crop_scale_min: float = 0.6
    hflip: bool = True
    color_jitter: float = 0.4
    # meta-training (spec §3.6) [V2V]
    meta_iters: int = 70000
    meta_ways: int = 60
    meta_shots: int = 5
    meta_queries: int = 10
    lr: float = 0.01
    lr_step: int = 30000
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    # incremental sessions (spec §3.2 refinements, §3.6 stage 3)
    retrain_iter: int = 10
    retrain_lr: float = 0.01
    retrain_ca: bool = True  # use lambda_ca * CAG2G in the session alignment [ours]
    retrain_lgp: bool = False  # add lambda_lgp * LGP in the session alignment [ours]
    nudging_iter: int = 0
    nudging_lr: float = 0.1
    nudging_deviation: float = 1.0  # weight of the 1 - cos(new, initial) term
    bipolarize: bool = False
    teen_tau: float = 16.0  # TEEN calibration temperature
    teen_weight: float = 0.1  # TEEN calibration weight w
    ncm_temperature: float = 16.0
    legacy_implicit_seeds: bool = False  # C-FSCIL quirk: manual_seed(0) at build, manual_seed(100) nudging
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.backbone in BACKBONES, f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        _check(
            self.interaction in ("g2g", "v2v"),
            f"interaction must be 'g2g' or 'v2v', got {self.interaction!r}",
        )
        for name in ("sharpen_train", "sharpen_eval"):
            v = getattr(self, name)
            _check(v in SHARPENINGS, f"{name} must be one of {SHARPENINGS}, got {v!r}")
        _check(
            self.representation in REPRESENTATIONS,
            f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}",
        )
        _check(
            self.node_match in ("aligned", "soft"),
            f"node_match must be aligned|soft, got {self.node_match!r}",
        )
        _check(
            self.edge_sim in ("cosine", "frobenius"),
            f"edge_sim must be cosine|frobenius, got {self.edge_sim!r}",
        )
        _check(
            self.edge_proto in ("from_nodes", "mean_adj"),
            f"edge_proto must be from_nodes|mean_adj, got {self.edge_proto!r}",
        )
        _check(
            self.node_proto in ("mean_rho", "rho_sum"),
            f"node_proto must be mean_rho|rho_sum, got {self.node_proto!r}",
        )
        _check(
            self.lgp in (None, "preserve", "anti_collapse"),
            f"lgp must be 'preserve', 'anti_collapse' or null, got {self.lgp!r}",
        )
        _check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        _check(self.feat_dim >= 1, "feat_dim must be >= 1")
        _check(self.tau > 0, "tau must be > 0")
        _check(self.beta > 0, "beta must be > 0")
        _check(self.n_views >= 1, "n_views must be >= 1")
        _check(self.meta_ways >= 2 and self.meta_shots >= 1 and self.meta_queries >= 1, "bad episode shape")
        _check(self.edge_knn is None or self.edge_knn >= 1, "edge_knn must be >= 1 or null")
        _check(self.local_pool is None or self.local_pool >= 1, "local_pool must be >= 1 or null")
        _check(0.0 < self.crop_scale_min <= 1.0, "crop_scale_min must be in (0, 1]")
        for name in ("meta_iters", "retrain_iter", "nudging_iter", "lr_step"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0")


@dataclass
class ExperimentConfig:
    """One paper table: data, FSCIL protocol, base pre-training, method (spec §5)."""

    name: str = "cifar100"
    dataset: str = "cifar100"
    data_root: str = "data/cifar100"
    index_dir: str | None = None  # TOPIC-style session_k.txt lists; None: generated reproducibly
    download: bool = False
    image_size: int = 32
    base_classes: int = 60
    ways: int = 5
    shots: int = 5
    num_sessions: int | None = 8
    split_seed: int = 1
    imagenet_r_test_frac: float = 0.2  # ImageNet-R has no official split [ours]
    method: str = "g2g"  # g2g | v2v | ncm | teen
    v2v_mode: int = 1  # C-FSCIL incremental mode for v2v: 1 none, 2 retrain+bipolarise, 3 retrain+nudging
    seeds: list[int] = field(default_factory=lambda: [0])
    pretrain_epochs: int = 120
    pretrain_lr: float = 0.01
    pretrain_step: int = 30
    pretrain_batch: int = 128
    eval_batch: int = 256
    num_workers: int = 0
    device: str = "auto"
    out_dir: str = "runs/g2g-fscil"
    ckpt_every: int = 1000
    model: G2GConfig = field(default_factory=G2GConfig)

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        _check(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        _check(self.v2v_mode in (1, 2, 3), f"v2v_mode must be 1, 2 or 3, got {self.v2v_mode}")
        _check(self.ways >= 1 and self.shots >= 1 and self.base_classes >= 1, "ways/shots/base must be >= 1")
        _check(len(self.seeds) >= 1, "seeds must not be empty")


@dataclass
class QuickConfig:
    """Digits experiment of spec §8 (6 base classes, two 2-way 5-shot sessions)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    base_classes: int = 6
    ways: int = 2
    shots: int = 5
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.05
    meta_iters: int = 300
    meta_ways: int = 6
    meta_shots: int = 5
    meta_queries: int = 5  # queries per class per episode (not fixed by spec §8; CPU budget) [ours]
    meta_lr: float = 0.01
    feat_dim: int = 32
    local_pool: int = 2
    retrain_iter: int = 10
    variants: list[str] = field(default_factory=lambda: ["v2v", "g2g_no_lgp", "g2g"])

    def __post_init__(self) -> None:
        known = (
            "v2v",
            "v2v_mode2",
            "v2v_mode3",
            "g2g",
            "g2g_no_lgp",
            "g2g_no_cag2g",
            "g2g_plain",
            "g2g_anti_collapse",
        )
        bad = [v for v in self.variants if v not in known]
        _check(not bad, f"unknown quick variants {bad}; valid: {list(known)}")
        _check(len(self.seeds) >= 1, "seeds must not be empty")


def preset(name: str) -> ExperimentConfig:
    """Paper-table presets: ``cifar100``, ``cub200``, ``imagenet_r`` (spec §5)."""
    if name == "cifar100":
        return ExperimentConfig()
    if name == "cub200":
        return ExperimentConfig(
            name="cub200",
            dataset="cub200",
            data_root="data/CUB_200_2011",
            image_size=224,
            base_classes=100,
            ways=10,
            num_sessions=10,
            pretrain_lr=0.001,
            model=G2GConfig(backbone="resnet18", pretrained_backbone=True, local_pool=3),
        )
    if name == "imagenet_r":
        return ExperimentConfig(
            name="imagenet_r",
            dataset="imagenet_r",
            data_root="data/imagenet-r",
            image_size=224,
            base_classes=100,
            ways=10,
            num_sessions=10,
            model=G2GConfig(backbone="resnet18", pretrained_backbone=True, local_pool=3),
        )
    raise ConfigError(f"unknown preset {name!r}; use cifar100, cub200 or imagenet_r")
