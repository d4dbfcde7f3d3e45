"""Typed configuration, validated when built.

Defaults are those of the official code (Biqing-Qi/Interactive-continual-Learning-Fast-and-Slow-Thinking
at commit 8c8ad10: ``utils/main.py``, ``utils/best_args.py`` and the run scripts in ``scripts/``); every
choice of ours is a field, every quirk of the official code a ``legacy_*`` (or named) switch. Nested
dataclasses load from YAML with :func:`papers_shared.config.load_config` and take dotted ``key=value``
overrides (``train.buffer_size=200``, ``loss.kappa=0.5``); ``icl-vmf show-config --help`` lists every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from papers_shared.config import Config, ConfigError, config_to_dict, field, from_dict

__all__ = [
    "METHODS",
    "AugmentConfig",
    "BaselineConfig",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ODIConfig",
    "System1Config",
    "System2Config",
    "TrainConfig",
]

#: learners on the stream runner: ICL System1 and the baselines of :mod:`icl_vmf.baselines`
METHODS = ("icl", "linear", "er", "derpp", "vit_finetune_er")
#: classes of each stream (a task split must divide them)
DATASET_CLASSES = {"digits": 10, "seq-cifar10": 10, "seq-cifar100": 100, "seq-imagenet-r": 200}


@dataclass
class System1Config(Config):
    """Frozen ViT + class projector + CKT-MHA + value memories (official ``backbone/cvt_online.py:Brain_Net_Vit``)."""

    vit: str = field(
        "google/vit-base-patch16-224",
        help="hub id or local folder of a ViT checkpoint (ViTModel / ViTForImageClassification)",
    )
    vit_config: dict | None = field(
        None,
        help="build the ViT from these ViTConfig kwargs instead (random weights; tests and the digits demo)",
    )
    image_size: int = field(224, ge=0, help="resize inside the model (the code: 224); 0 keeps the input size")
    normalize_mean: tuple[float, float, float] = field((0.5, 0.5, 0.5), help="per-channel input mean")
    normalize_std: tuple[float, float, float] = field((0.5, 0.5, 0.5), gt=0, help="per-channel input std")
    hidden_dim: int = field(896, ge=1, help="d_c, the class-memory width (CIFAR-100 System2 runs use 768)")
    memory_dim: int = field(1024, ge=2, help="d_t + d_c (the code fixes 1024); d_t = memory_dim - hidden_dim")
    num_heads: int = field(8, ge=1, help="heads of CKT-MHA's attention")
    proj_mult: int = field(4, ge=1, help="width multiplier of the class projector's hidden layer")
    use_ckt_mha: bool = field(
        True, help="false: the task part comes from a plain MLP D -> 4D -> d_t (ablation)"
    )
    init_std: float = field(1.0, gt=0, help="std of the N(0, std^2) initialisation of all four memory tables")
    fused_inference: bool = field(
        True,
        help="(ours) eval-mode embedding through the algebraically fused CKT-MHA path (same numbers, faster)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim >= self.memory_dim:
            raise ConfigError(
                f"system1.hidden_dim={self.hidden_dim} (d_c) must be smaller than system1.memory_dim="
                f"{self.memory_dim} (d_t + d_c): no width would be left for the task memory"
            )


@dataclass
class LossConfig(Config):
    """CL-vMF loss ``L = L_vMF + lmbda * L_reg`` (official ``models/onlinevt.py:Onlinevt.Brain_co_loss_vit``)."""

    kappa: float = field(
        1.0, gt=0, help="temperature dividing the cosines (the code's kappa; vMF concentration 1/kappa)"
    )
    lmbda: float = field(0.1, ge=0, help="weight of the margin regulariser")
    delta: float = field(0.01, ge=0, help="margin of the regulariser (all run scripts: 0.01)")
    gamma: float = field(1e-6, ge=0, help="constant added to the softmax denominator")
    replay_weight: float = field(
        1.0,
        ge=0,
        help="weight of the replay matrix's loss when mix_replay is false (the code adds it with weight 1)",
    )
    mix_replay: bool = field(
        False,
        help="(ours) current and replay samples in ONE similarity matrix, so current samples also contrast with "
        "old classes; false = the official code's two separate matrices (models/onlinevt.py:Onlinevt.get_loss "
        "at 8c8ad10)",
    )


@dataclass
class AugmentConfig(Config):
    """Second view of every image in the loss (the code's kornia pipeline) and the train flip."""

    enabled: bool = field(True, help="draw the second view (false: the loss sees each image once)")
    crop_scale: tuple[float, float] = field(
        (0.8, 1.0), gt=0, le=1, help="RandomResizedCrop area range (lo, hi)"
    )
    degrees: float = field(30.0, ge=0, le=180, help="RandomRotation range +-degrees")
    brightness: float = field(0.4, ge=0, help="ColorJitter brightness")
    contrast: float = field(0.4, ge=0, help="ColorJitter contrast")
    saturation: float = field(0.2, ge=0, help="ColorJitter saturation")
    hue: float = field(0.1, ge=0, le=0.5, help="ColorJitter hue")
    grayscale_p: float = field(0.2, ge=0, le=1, help="RandomGrayscale probability")
    hflip: bool = field(
        True,
        help="the torchvision train transform's horizontal flip on the current batch (the code's ImageNet-R "
        "loader returns un-flipped images)",
    )
    hflip_replay: bool = field(
        True, help="the same flip on replayed samples (the code's buffer transform flips)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.crop_scale[0] > self.crop_scale[1]:
            raise ConfigError(
                f"augment.crop_scale={list(self.crop_scale)}: the lower bound exceeds the upper"
            )


@dataclass
class TrainConfig(Config):
    """Online protocol and optimisation (official ``models/onlinevt.py:Onlinevt.observe``, ``utils/buffer.py``)."""

    n_epochs: int = field(1, ge=1, help="passes over each task's stream (online: 1)")
    batch_size: int = field(10, ge=1, help="global stream batch (split over processes under torchrun)")
    minibatch_size: int = field(10, ge=1, help="replay samples drawn per loss evaluation")
    buffer_size: int = field(
        500, ge=0, help="replay buffer capacity (class-balanced: buffer_size // classes per class)"
    )
    lr: float = field(1e-4, gt=0, help="Adam learning rate of every optimizer")
    weight_decay: float = field(0.0, ge=0, help="Adam weight decay")
    em_steps: int | None = field(
        60,
        ge=0,
        help="batches (per epoch, see em_index) with a memory step before the projection step; null = always",
    )
    em_index: Literal["epoch", "task"] = field(
        "epoch",
        help="'epoch': the in-epoch batch index drives the EM switch (code); 'task': the index within the task",
    )
    reset_optimizers_each_task: bool = field(
        False,
        help="rebuild both Adam optimizers at every task start (code: on for ImageNet-R, off for CIFAR)",
    )
    buffer_admission: Literal["reservoir", "screening"] = field(
        "reservoir",
        help="'screening': keep a sample only if its input-gradient norm is below the class's minimum so far "
        "(in the code, marked unused)",
    )
    legacy_buffer_sampling: bool = field(
        False, help="replay draws from the first `count` slot positions, empty slots included (code quirk)"
    )
    buffer_dtype: Literal["float32", "uint8"] = field(
        "float32", help="dtype of stored images (uint8 is lossless for ToTensor images)"
    )
    test_batch_size: int = field(32, ge=2, help="test mini-batch (vMF-ODI standardises within it)")
    progress: bool = field(True, help="show tqdm progress bars (rank 0 only)")
    num_threads: int = field(0, ge=0, help="torch threads during the run (0 keeps the current setting)")


@dataclass
class ODIConfig(Config):
    """vMF-ODI: z-score of the best cosine within each test mini-batch (``utils/training.py:normalize_and_find_outliers``)."""

    z_threshold: float = field(-0.842, help="flag samples whose z-score is below this (20 % tail of N(0, 1))")
    scope: Literal["batch", "running"] = field(
        "batch", help="'batch' (code) or 'running' (ours: statistics over all test scores so far)"
    )
    mode: Literal["zscore", "random"] = field(
        "zscore", help="'random' flags a random `random_fraction` of samples (ablation)"
    )
    random_fraction: float = field(0.2, ge=0, le=1, help="share flagged by mode=random")


@dataclass
class System2Config(Config):
    """The slow system (``utils/cor_with_slow.py``): which MLLM, prompt, parsing, when it is consulted."""

    enabled: bool = field(False, help="consult System2 on vMF-ODI-flagged samples")
    backend: Literal["oracle", "hf", "tiny", "clip"] = field(
        "hf",
        help="'hf' (model_id, any image-text-to-text checkpoint), 'clip' (ours: CLIP zero-shot over the "
        "candidates), 'oracle' (true class with probability oracle_accuracy), 'tiny' (random tiny LLaVA: plumbing)",
    )
    model_id: str = field("llava-hf/llava-1.5-7b-hf", help="hub id or local folder of the System2 model")
    k: int = field(3, ge=1, help="number of System1 candidates in the prompt")
    template: Literal["puremm", "minigpt4"] = field(
        "puremm",
        help="'puremm' (single turn, the code's PureMM/INF-MLLM prompt) or 'minigpt4' (describe, then choose)",
    )
    answer_mode: Literal["generate", "loglik"] = field(
        "generate",
        help="'generate' (greedy answer + parser + fallback) or 'loglik' (ours: argmax candidate likelihood)",
    )
    parse_mode: Literal["substring", "word"] = field(
        "substring", help="'substring' (code) or 'word' (word-boundary matching)"
    )
    legacy_parse: bool = field(
        False, help="the code's parser: candidate names keep non-letters; MiniGPT-4 path case-sensitive"
    )
    max_new_tokens: int = field(128, ge=1, help="generation budget per answer")
    oracle_accuracy: float = field(1.0, ge=0, le=1, help="probability that the oracle names the true class")
    final_only: bool = field(True, help="consult System2 only in the evaluation after the last task (code)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = field(
        "auto", help="'auto': float16 on CUDA, float32 otherwise"
    )
    device_map: str | None = field(None, help="transformers device_map for large models (e.g. 'auto')")
    batch_size: int = field(8, ge=1, help="images per System2 call")


@dataclass
class BaselineConfig(Config):
    """Baselines on the same stream runner (:mod:`icl_vmf.baselines`)."""

    derpp_alpha: float = field(0.2, ge=0, help="DER++ logit-MSE weight")
    derpp_beta: float = field(0.5, ge=0, help="DER++ replay-CE weight")
    use_aug_view: bool = field(
        True, help="CE also on the augmented second view (as ICL's loss and the code's ViT baseline)"
    )


@dataclass
class DataConfig(Config):
    """Stream construction (official ``datasets/seq_*.py``)."""

    dataset: Literal["seq-cifar10", "seq-cifar100", "seq-imagenet-r", "digits"] = field(
        "seq-cifar10", help="the class-incremental stream"
    )
    root: str = field("data", help="dataset folder (CIFAR batches, or the extracted imagenet-r.tar)")
    download: bool = field(
        False, help="let torchvision fetch CIFAR into root when missing (off: a clear error)"
    )
    num_tasks: int = field(5, ge=1, help="tasks of the stream (must divide the number of classes)")
    class_order_seed: int | None = field(
        None, help="null: ascending class ids (the code); an int: seeded shuffle"
    )
    train_fraction: float = field(0.8, gt=0, lt=1, help="ImageNet-R: seeded per-class train fraction")
    split_seed: int = field(0, ge=0, help="seed of the train/test split and of per-task caps")
    load_size: int = field(224, ge=1, help="ImageNet-R: images are resized to load_size^2 at load time")
    digits_size: int = field(16, ge=8, help="digits: upsampled image size")
    pretrain_fraction: float = field(
        0.3,
        gt=0,
        lt=1,
        help="digits: share of training images used to pre-train the tiny ViT (not in the stream)",
    )
    pretrain_epochs: int = field(20, ge=0, help="digits: epochs of the tiny ViT's pre-training")
    pretrain_seed: int | None = field(
        None,
        ge=0,
        help="digits: seed of the tiny ViT's pre-training, one encoder shared by every run seed (as one public "
        "checkpoint is in the paper); null: each run seed pre-trains its own encoder",
    )
    pretrain_lr: float = field(1e-3, gt=0, help="digits: pre-training learning rate")
    pretrain_batch_size: int = field(16, ge=1, help="digits: pre-training batch")
    max_train_per_task: int = field(0, ge=0, help="cap on training images per task (0 = all; smoke runs)")
    max_test_per_task: int = field(0, ge=0, help="cap on test images per task (0 = all)")
    num_workers: int = field(0, ge=0, help="DataLoader workers for image-folder and CIFAR streams")

    def __post_init__(self) -> None:
        super().__post_init__()
        n = DATASET_CLASSES[self.dataset]
        if n % self.num_tasks:
            raise ConfigError(
                f"data.num_tasks={self.num_tasks}: {self.dataset} has {n} classes, which do not split into "
                f"{self.num_tasks} equal tasks"
            )


_VARIANT_NAME = re.compile(r"^[A-Za-z][\w.\-]*$")


@dataclass
class ExperimentConfig(Config):
    """One experiment: methods run on the same stream, once per seed."""

    name: str = field("icl", help="run name (the output folder is <out_dir>/<name> unless --out is given)")
    methods: list[str] = field(
        default_factory=lambda: ["icl"],
        help=f"learners to run: any of {list(METHODS)} and the names in icl_variants",
    )
    icl_variants: dict[str, dict] = field(
        default_factory=dict,
        help="extra ICL learners on the same stream: name -> loss overrides, e.g. "
        "{icl_mix: {mix_replay: true}, icl_kappa0.1: {kappa: 0.1}}; list the names in methods",
    )
    seeds: list[int] = field(default_factory=lambda: [42], ge=0, help="one run of every method per seed")
    device: str = field("auto", help="cpu, cuda, cuda:1 or auto (under torchrun: cuda:<local rank>)")
    out_dir: str = field("runs/icl-vmf", help="parent folder of runs")
    checkpoint: bool = field(True, help="atomic checkpoint after every task (resume with --resume)")
    parallel_runs: int = field(
        1,
        ge=1,
        help="(ours) on CPU, run the (seed, method) runs in this many processes side by side (numbers do not "
        "depend on it); 1 under torchrun",
    )
    system1: System1Config = field(default_factory=System1Config, help="System1 architecture")
    loss: LossConfig = field(default_factory=LossConfig, help="CL-vMF loss")
    augment: AugmentConfig = field(default_factory=AugmentConfig, help="second view and flips")
    train: TrainConfig = field(default_factory=TrainConfig, help="online protocol")
    odi: ODIConfig = field(default_factory=ODIConfig, help="vMF-ODI hard-sample detector")
    system2: System2Config = field(default_factory=System2Config, help="the slow system")
    baselines: BaselineConfig = field(default_factory=BaselineConfig, help="baseline settings")
    data: DataConfig = field(default_factory=DataConfig, help="the stream")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.methods:
            raise ConfigError("methods is empty: name at least one learner")
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed")
        for name, over in self.icl_variants.items():
            if name in METHODS or not _VARIANT_NAME.match(str(name)):
                raise ConfigError(
                    f"icl_variants: {name!r} must be a new name (letters, digits, _ . -), not one of {list(METHODS)}"
                )
            if not isinstance(over, dict):
                raise ConfigError(f"icl_variants.{name} must map loss keys to values, got {over!r}")
            from_dict(LossConfig, {**config_to_dict(self.loss), **over}, prefix=f"icl_variants.{name}.")
        known = (*METHODS, *self.icl_variants)
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ConfigError(f"unknown method(s) {bad}; choose from {list(known)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods lists a learner twice: {self.methods}")

    def loss_for(self, method: str) -> LossConfig:
        """The loss of ``method``: :attr:`loss` with the variant's overrides applied."""
        over = self.icl_variants.get(method, {})
        return from_dict(LossConfig, {**config_to_dict(self.loss), **over}) if over else self.loss

    def is_icl(self, method: str) -> bool:
        """True for ICL System1 and its variants."""
        return method == "icl" or method in self.icl_variants
