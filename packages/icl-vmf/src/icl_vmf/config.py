"""Typed configuration (spec §3.13 defaults; every [ours] choice and every official-code quirk is a field).

Nested dataclasses load from YAML with :func:`papers_shared.config.load_config` and take dotted
``key=value`` overrides (``train.buffer_size=200``, ``loss.kappa=0.5``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from papers_shared.config import ConfigError

__all__ = [
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

METHODS = ("icl", "linear", "er", "derpp", "vit_finetune_er")


@dataclass
class System1Config:
    """Frozen ViT + class projector + CKT-MHA + value memories (spec §3.1-3.5)."""

    #: hub id or local folder of any ViT checkpoint (``ViTModel`` / ``ViTForImageClassification``)
    vit: str = "google/vit-base-patch16-224"
    #: build the ViT from these ``ViTConfig`` kwargs instead (random weights; tests and the digits demo)
    vit_config: dict | None = None
    #: resize inside the model (spec §3.1: 224); 0 keeps the input size
    image_size: int = 224
    normalize_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    normalize_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: d_c, the class-memory width (``hidden_dim``; 896, CIFAR-100 System2 runs use 768)
    hidden_dim: int = 896
    #: d_t + d_c (the code fixes 1024); d_t = memory_dim - hidden_dim
    memory_dim: int = 1024
    num_heads: int = 8
    proj_mult: int = 4
    #: False: the task part comes from a plain MLP D -> 4D -> d_t (ablation, spec §4.5)
    use_ckt_mha: bool = True
    #: std of the N(0, std^2) initialisation of all four memory tables
    init_std: float = 1.0
    #: [ours] eval-mode embedding through the algebraically fused CKT-MHA path (same numbers, faster)
    fused_inference: bool = True


@dataclass
class LossConfig:
    """CL-vMF loss (spec §3.7): ``L = L_vMF + lmbda * L_reg`` on current and (task >= 1) replay matrices."""

    kappa: float = 1.0
    lmbda: float = 0.1
    delta: float = 0.01
    gamma: float = 1e-6
    #: weight of the replay matrix's loss (the code adds it with weight 1)
    replay_weight: float = 1.0


@dataclass
class AugmentConfig:
    """Second view of every image in the loss (the code's kornia pipeline, spec §3.7) and train flip."""

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    degrees: float = 30.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    #: the torchvision train transform's RandomHorizontalFlip on the current batch (the code's
    #: ImageNet-R loader returns un-flipped images)
    hflip: bool = True
    #: the same flip on replayed samples (the code's buffer transform always flips)
    hflip_replay: bool = True


@dataclass
class TrainConfig:
    """Online protocol and optimisation (spec §2, §3.8, §3.9, §3.13)."""

    n_epochs: int = 1
    batch_size: int = 10
    minibatch_size: int = 10
    buffer_size: int = 500
    lr: float = 1e-4
    weight_decay: float = 0.0
    #: batches (per epoch, see ``em_index``) with a memory step before the projection step; null = always
    em_steps: int | None = 60
    #: "epoch": the in-epoch batch index drives the switch (code); "task": the index within the task
    em_index: str = "epoch"
    #: rebuild both Adam optimizers at every task start (code: on for ImageNet-R, off for CIFAR)
    reset_optimizers_each_task: bool = False
    #: "reservoir" (default) or "screening" (keep a sample only if its input-gradient norm is below the
    #: per-class minimum so far; in the code, marked unused)
    buffer_admission: str = "reservoir"
    #: replay draws from the first ``count`` slot positions, empty slots included (code quirk)
    legacy_buffer_sampling: bool = False
    #: dtype of stored images ("float32" or "uint8"; uint8 is lossless for ToTensor images)
    buffer_dtype: str = "float32"
    test_batch_size: int = 32
    #: show tqdm progress bars
    progress: bool = True
    #: torch threads during the run (0 keeps the current setting)
    num_threads: int = 0


@dataclass
class ODIConfig:
    """vMF-ODI (spec §3.10): z-score of the best cosine within each test mini-batch."""

    z_threshold: float = -0.842
    #: "batch" (code) or "running" (statistics over all test scores so far) [ours]
    scope: str = "batch"
    #: "zscore" or "random" (flag a random ``random_fraction`` of samples: ablation)
    mode: str = "zscore"
    random_fraction: float = 0.2


@dataclass
class System2Config:
    """The slow system (spec §3.11): which MLLM, prompt, parsing, when it is consulted."""

    enabled: bool = False
    #: "oracle" (true class with probability ``oracle_accuracy``), "hf" (``model_id``), "tiny" (random
    #: tiny LLaVA: plumbing only), "clip" (CLIP zero-shot over the candidates, ``model_id``)
    backend: str = "hf"
    model_id: str = "llava-hf/llava-1.5-7b-hf"
    #: number of System1 candidates in the prompt
    k: int = 3
    #: "puremm" (single turn, code's PureMM/INF-MLLM prompt) or "minigpt4" (describe, then choose)
    template: str = "puremm"
    #: "generate" (greedy answer + parser + fallback) or "loglik" (argmax of candidate log-likelihoods)
    answer_mode: str = "generate"
    #: "substring" (code) or "word" (word-boundary matching)
    parse_mode: str = "substring"
    #: the code's parser: candidate names keep non-letters (only ``_`` and case handled); with the
    #: MiniGPT-4 template: raw case-sensitive substring test
    legacy_parse: bool = False
    max_new_tokens: int = 128
    oracle_accuracy: float = 1.0
    #: consult System2 only in the evaluation after the last task (code)
    final_only: bool = True
    #: "auto" (float16 on CUDA, float32 otherwise), "float32", "float16", "bfloat16"
    dtype: str = "auto"
    device_map: str | None = None
    batch_size: int = 8


@dataclass
class BaselineConfig:
    """Baselines of spec §4 on the same stream runner."""

    #: DER++ logit-MSE weight and replay-CE weight
    derpp_alpha: float = 0.2
    derpp_beta: float = 0.5
    #: CE also on the augmented second view (as ICL's loss and the code's ViT fine-tuning baseline)
    use_aug_view: bool = True


@dataclass
class DataConfig:
    """Stream construction (spec §2, §5)."""

    #: "seq-cifar10", "seq-cifar100", "seq-imagenet-r" or "digits"
    dataset: str = "seq-cifar10"
    root: str = "data"
    #: let torchvision fetch CIFAR into ``root`` when it is missing (off: a clear error instead)
    download: bool = False
    num_tasks: int = 5
    #: null: ascending class ids (the code); an int: seeded class shuffle
    class_order_seed: int | None = None
    #: ImageNet-R: seeded per-class train fraction and the load size (images are resized to it)
    train_fraction: float = 0.8
    split_seed: int = 0
    load_size: int = 224
    #: digits: upsampled size and the fraction of training images used to pre-train the tiny ViT
    digits_size: int = 16
    pretrain_fraction: float = 0.3
    pretrain_epochs: int = 20
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 16
    #: cap on training images per task (0 = all); for smoke runs
    max_train_per_task: int = 0
    max_test_per_task: int = 0
    num_workers: int = 0


@dataclass
class ExperimentConfig:
    """One experiment: methods run on the same stream, once per seed."""

    name: str = "icl"
    #: any of "icl", "linear" (frozen ViT + linear head, no replay), "er", "derpp", "vit_finetune_er"
    methods: list[str] = field(default_factory=lambda: ["icl"])
    seeds: list[int] = field(default_factory=lambda: [42])
    device: str = "auto"
    out_dir: str = "runs/icl-vmf"
    #: atomic checkpoint after every task (resume with ``--resume``)
    checkpoint: bool = True
    system1: System1Config = field(default_factory=System1Config)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    odi: ODIConfig = field(default_factory=ODIConfig)
    system2: System2Config = field(default_factory=System2Config)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
        if not self.methods:
            raise ConfigError("methods is empty")
        choices = {
            "train.em_index": (self.train.em_index, ("epoch", "task")),
            "train.buffer_admission": (self.train.buffer_admission, ("reservoir", "screening")),
            "train.buffer_dtype": (self.train.buffer_dtype, ("float32", "uint8")),
            "odi.scope": (self.odi.scope, ("batch", "running")),
            "odi.mode": (self.odi.mode, ("zscore", "random")),
            "system2.backend": (self.system2.backend, ("oracle", "hf", "tiny", "clip")),
            "system2.template": (self.system2.template, ("puremm", "minigpt4")),
            "system2.answer_mode": (self.system2.answer_mode, ("generate", "loglik")),
            "system2.parse_mode": (self.system2.parse_mode, ("substring", "word")),
            "system2.dtype": (self.system2.dtype, ("auto", "float32", "float16", "bfloat16")),
            "data.dataset": (self.data.dataset, ("seq-cifar10", "seq-cifar100", "seq-imagenet-r", "digits")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
        if self.system1.hidden_dim >= self.system1.memory_dim:
            raise ConfigError("system1.hidden_dim (d_c) must be smaller than system1.memory_dim (d_t + d_c)")
        if self.loss.kappa <= 0:
            raise ConfigError(f"loss.kappa must be > 0, got {self.loss.kappa}")
        if self.system2.k < 1:
            raise ConfigError(f"system2.k must be >= 1, got {self.system2.k}")
        if self.train.batch_size < 1 or self.train.n_epochs < 1:
            raise ConfigError("train.batch_size and train.n_epochs must be >= 1")
