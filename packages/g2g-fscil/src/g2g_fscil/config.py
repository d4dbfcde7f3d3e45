"""Configuration dataclasses, validated when built (``papers_shared.config.Config``).

``G2GConfig`` holds the method: backbone and projection, G2G/V2V read-out, LGP, CAG2G, meta-training and
the incremental alignment. ``ExperimentConfig`` adds the data, the FSCIL protocol, base pre-training and
the list of variants an ablation (or the quick reproduction) runs. Tags in the help texts: "(paper)" =
stated in the G2G abstract (arXiv 2403.04140), "(C-FSCIL)" = taken from the official C-FSCIL code
(IBM/constrained-FSCIL, commit cff95a7), "(ours)" = our reconstruction of what the paper does not give.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from papers_shared.cli import resolve_config
from papers_shared.config import Config, ConfigError, field, load_config

__all__ = [
    "DATASET_CLASSES",
    "ExperimentConfig",
    "G2GConfig",
    "VARIANTS",
    "preset",
]

Backbone = Literal["resnet12", "resnet18", "resnet20", "tiny"]
Sharpening = Literal["softabs", "abs", "softrelu", "relu", "exp", "scaledexp", "none"]
Representation = Literal["tanh", "real", "bipolar"]
LGPMode = Literal["centred", "preserve", "image_centred", "anti_collapse"]
Method = Literal["g2g", "v2v", "ncm", "teen"]
Dataset = Literal["digits", "cifar100", "cub200", "imagenet_r"]
Variant = Literal[
    "ncm",
    "teen",
    "v2v",
    "v2v_mode1",
    "v2v_mode2",
    "v2v_mode3",
    "g2g",
    "g2g_no_lgp",
    "g2g_no_cag2g",
    "g2g_plain",
    "g2g_lgp_preserve",
    "g2g_lgp_image_centred",
    "g2g_anti_collapse",
    "g2g_node_only",
    "g2g_edge_only",
    "g2g_split",
]
VARIANTS: tuple[str, ...] = typing.get_args(Variant)
#: number of classes of each dataset (for the split checks)
DATASET_CLASSES = {"digits": 10, "cifar100": 100, "cub200": 200, "imagenet_r": 200}


@dataclass
class G2GConfig(Config):
    """G2G / V2V explicit-memory FSCIL model and its training."""

    # backbone and projection
    backbone: Backbone = field("resnet12", help="feature-map backbone (tiny: the digits TinyConvNet)")
    in_channels: int = field(3, ge=1, help="image channels")
    pretrained_backbone: bool = field(
        False, help="ImageNet weights for resnet18, read from a local file only"
    )
    backbone_weights: str | None = field(
        None, help="path of a torchvision resnet18 state dict; null: the torch hub cache"
    )
    feat_dim: int = field(512, ge=1, help="d, output size of the projection g_phi (C-FSCIL dim_features)")
    node_dim: Literal["full", "split"] = field(
        "full",
        help="(ours) full: every node has d dims; split: g_phi outputs d/M dims, so the M nodes together "
        "are as long as a V2V key (about V2V's retrieval cost)",
    )
    local_pool: int | None = field(
        None, ge=1, help="(ours) adaptive average pool of the map to r x r before building graphs (M = r*r)"
    )
    representation: Representation = field("tanh", help="rho in meta-training and evaluation (C-FSCIL)")
    # retrieval
    interaction: Literal["g2g", "v2v"] = field("g2g", help="memory read-out: graph-to-graph or vector")
    sharpen_train: Sharpening = field("softabs", help="sharpening in meta-training (C-FSCIL)")
    sharpen_eval: Sharpening = field("abs", help="sharpening at evaluation (C-FSCIL)")
    beta: float = field(10.0, gt=0, help="sharpening strength (C-FSCIL sharpening_strength)")
    normalize: bool = field(True, help="normalise the weightings to sum 1 (C-FSCIL normalize_weightings)")
    alpha: float = field(0.5, ge=0, le=1, help="(ours) weight of the node term; 1 - alpha for the edges")
    node_match: Literal["aligned", "soft"] = field(
        "aligned", help="(ours) node term: position-aligned cosines or best match per node"
    )
    edge_sim: Literal["cosine", "frobenius"] = field("cosine", help="(ours) edge term between adjacencies")
    edge_knn: int | None = field(None, ge=1, help="(ours) keep the top-k edges per row, symmetrised")
    edge_proto: Literal["from_nodes", "mean_adj"] = field(
        "from_nodes", help="(ours) prototype edges: cos-adjacency of the prototype nodes, or mean adjacency"
    )
    node_proto: Literal["mean_rho", "rho_key"] = field(
        "mean_rho",
        help="(ours) prototype nodes: mean of rho(z) over the supports, or rho of the aggregate the V2V "
        "key uses (C-FSCIL: sum in episodes, projected class-mean feature in the memory)",
    )
    # LGP
    lgp: LGPMode | None = field(
        "centred",
        help="(ours) Local Graph Preservation: centred (match the backbone graph after removing the "
        "batch-mean local feature), preserve (uncentred backbone graph), image_centred (per-image "
        "centring; zero-sum target), anti_collapse (hinge on A_ij > margin), null (off)",
    )
    lambda_lgp: float = field(1.0, ge=0, help="(ours) weight of the LGP loss")
    lgp_margin: float = field(0.5, ge=-1, le=1, help="(ours) margin of anti_collapse")
    lgp_detach_backbone: bool = field(True, help="(ours) stop-gradient on the backbone graph")
    # CAG2G
    cag2g: bool = field(True, help="(paper) contrastive loss on G2G similarities of augmented views")
    lambda_ca: float = field(0.5, ge=0, help="(ours) weight of the CAG2G loss")
    tau: float = field(0.1, gt=0, help="(ours) CAG2G temperature")
    n_views: int = field(2, ge=1, help="(ours) augmented views per query")
    crop_scale_min: float = field(0.6, gt=0, le=1, help="(ours) random-resized-crop minimum area")
    hflip: bool = field(True, help="(ours) random horizontal flip of the views")
    color_jitter: float = field(0.4, ge=0, le=1, help="(ours) brightness/contrast/saturation jitter")
    # meta-training (C-FSCIL CIFAR recipe)
    meta_iters: int = field(70000, ge=0, help="meta-training episodes (C-FSCIL)")
    meta_ways: int = field(60, ge=2, help="classes per episode (C-FSCIL num_ways)")
    meta_shots: int = field(5, ge=1, help="supports per class (C-FSCIL num_shots)")
    meta_queries: int = field(10, ge=1, help="queries per class (C-FSCIL batch_size_training)")
    lr: float = field(0.01, gt=0, help="meta-training learning rate (C-FSCIL)")
    lr_step: int = field(30000, ge=1, help="StepLR step of meta-training (C-FSCIL)")
    lr_gamma: float = field(0.1, gt=0, le=1, help="StepLR factor")
    momentum: float = field(0.9, ge=0, lt=1, help="SGD momentum (C-FSCIL SGDmomentum)")
    weight_decay: float = field(5e-4, ge=0, help="SGD weight decay (C-FSCIL SGDweight_decay)")
    nesterov: bool = field(True, help="Nesterov momentum (C-FSCIL SGDnesterov)")
    freeze_bn: bool = field(
        False,
        help="(ours) BatchNorm keeps its running statistics (eval mode) in pre- and meta-training; makes "
        "multi-process CPU runs equal one process (no SyncBatchNorm on CPU)",
    )
    # incremental sessions (C-FSCIL align())
    retrain_iter: int = field(10, ge=0, help="steps of g_phi alignment per session (C-FSCIL retrain_iter)")
    retrain_lr: float = field(0.01, gt=0, help="learning rate of the session alignment")
    retrain_ca: bool = field(True, help="(ours) add lambda_ca * CAG2G to the G2G session alignment")
    retrain_lgp: bool = field(False, help="(ours) add lambda_lgp * LGP to the G2G session alignment")
    nudging_iter: int = field(0, ge=0, help="prototype nudging steps (C-FSCIL nudging_iter; mode 3)")
    nudging_lr: float = field(0.1, gt=0, help="nudging learning rate (C-FSCIL nudge_prototypes default)")
    nudging_act: Literal["doubleexp", "exp"] = field(
        "doubleexp", help="pairwise nudging penalty (C-FSCIL nudging_act)"
    )
    nudging_act_exp: float = field(4.0, gt=0, help="exponent of the nudging penalty (C-FSCIL)")
    nudging_deviation: float = field(1.0, ge=0, help="weight of the 1 - cos(new, initial) term (C-FSCIL: 1)")
    bipolarize: bool = field(False, help="sign() of the prototypes before retraining (C-FSCIL mode 2)")
    # baselines
    teen_tau: float = field(16.0, gt=0, help="TEEN calibration temperature")
    teen_weight: float = field(0.1, ge=0, le=1, help="TEEN calibration weight w")
    ncm_temperature: float = field(16.0, gt=0, help="NCM cosine temperature (does not change argmax)")
    legacy_implicit_seeds: bool = field(
        False, help="C-FSCIL quirk: manual_seed(0) when the model is built, manual_seed(100) in nudging"
    )
    seed: int = field(0, help="seed of this model's run (set per seed by the experiment)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov=true needs momentum > 0 (torch SGD); set nesterov=false or momentum")
        if self.node_dim == "split" and self.local_pool is not None:
            m = self.local_pool * self.local_pool
            if self.feat_dim % m:
                raise ConfigError(
                    f"node_dim=split gives each of the M={m} nodes feat_dim/M dims: feat_dim={self.feat_dim} "
                    f"is not divisible by {m}"
                )


@dataclass
class ExperimentConfig(Config):
    """One paper table: data, FSCIL protocol, base pre-training, method."""

    name: str = field("cifar100", help="run name (output sub-folder)")
    dataset: Dataset = field("cifar100", help="dataset")
    data_root: str = field("data/cifar100", help="local dataset folder (nothing is downloaded by default)")
    index_dir: str | None = field(
        None, help="TOPIC-style session_k.txt lists; null: sessions generated reproducibly (split_seed)"
    )
    download: bool = field(False, help="let torchvision download CIFAR-100 into data_root")
    image_size: int = field(32, ge=1, help="input size in pixels")
    base_classes: int = field(60, ge=1, help="classes of session 0")
    ways: int = field(5, ge=1, help="new classes per incremental session")
    shots: int = field(5, ge=1, help="labelled images per new class")
    num_sessions: int | None = field(8, ge=1, help="incremental sessions; null: as many as the classes allow")
    split_seed: int = field(1, help="seed of generated sessions and of the digits/ImageNet-R splits")
    imagenet_r_test_frac: float = field(
        0.2, gt=0, lt=1, help="(ours) ImageNet-R has no official split: test share per class"
    )
    method: Method = field("g2g", help="method of `run`: g2g, v2v (C-FSCIL), ncm, teen")
    v2v_mode: Literal[1, 2, 3] = field(
        1, help="C-FSCIL incremental mode of v2v: 1 none, 2 retrain + bipolarise, 3 retrain + nudging"
    )
    variants: list[Variant] = field(
        default_factory=lambda: ["v2v", "g2g_plain", "g2g_no_cag2g", "g2g_no_lgp", "g2g"],
        help=f"variants of `ablate` and the quick reproduction, one shared pre-training per seed; one of "
        f"{list(VARIANTS)}",
    )
    seeds: list[int] = field(default_factory=lambda: [0], help="seeds; one full run per seed")
    pretrain_epochs: int = field(120, ge=0, help="base pre-training epochs (C-FSCIL CIFAR recipe)")
    pretrain_lr: float = field(0.01, gt=0, help="pre-training learning rate (C-FSCIL)")
    pretrain_step: int = field(30, ge=1, help="pre-training StepLR step in epochs (C-FSCIL)")
    pretrain_batch: int = field(128, ge=2, help="global pre-training batch (split over processes)")
    eval_batch: int = field(256, ge=1, help="evaluation batch")
    num_workers: int = field(0, ge=0, help="DataLoader workers for image files")
    device: str = field("auto", help="cpu, cuda, cuda:1 or auto")
    out_dir: str = field("runs/g2g-fscil", help="output folder")
    ckpt_every: int = field(1000, ge=0, help="meta-training checkpoint interval in episodes (0: none)")
    model: G2GConfig = field(default_factory=G2GConfig, help="the method")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.seeds:
            raise ConfigError("seeds must not be empty")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"unknown variants {bad}; valid: {list(VARIANTS)}")
        total = DATASET_CLASSES[self.dataset]
        sessions = self.num_sessions or 0
        if self.dataset == "digits":
            sessions = 1  # digits runs as many sessions as its 10 classes allow
        if self.base_classes + self.ways * sessions > total:
            raise ConfigError(
                f"{self.dataset} has {total} classes: base_classes={self.base_classes} + ways={self.ways} x "
                f"sessions={sessions} do not fit"
            )
        if self.model.meta_ways > self.base_classes:
            raise ConfigError(
                f"an episode cannot have more ways (model.meta_ways={self.model.meta_ways}) than there are "
                f"base classes ({self.base_classes})"
            )


def preset(name: str) -> ExperimentConfig:
    """A shipped config by name (``cifar100``, ``cub200``, ``imagenet_r``, ``digits``, ``quick``, ...)."""
    return load_config(ExperimentConfig, resolve_config("g2g_fscil", name))
