"""Typed configs, validated when built (``papers_shared.config.Config``).

The paper's method section, hyper-parameters and tables could not be read and there is no official code,
so almost every field here is our own design choice ("(ours)"): each one is a field, with the default
we use, so that a reader with the paper can set it. There is no official code, hence no ``legacy_*``
switch; the earlier rules this package used are kept as named choices (``fast.routing=max_conf``,
``caoad.score=max_prob`` + ``caoad.rule=zscore``, ``generator.gaussian_source=task``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from papers_shared.config import Config, ConfigError, field

__all__ = [
    "CAOADConfig",
    "DataConfig",
    "ExperimentConfig",
    "FastPathConfig",
    "GeneratorConfig",
    "LoraSpec",
    "METHOD_NAMES",
    "QuickConfig",
    "RestructureConfig",
    "SRCISConfig",
    "STMConfig",
    "SlowPathConfig",
    "SmallModelConfig",
    "TextMemoryConfig",
    "TinyViTConfig",
]

#: every method the runner knows (SR-CIS variants first, then the baselines)
METHOD_NAMES = (
    "sr_cis",
    "per_task_lora",
    "sr_cis_fast_only",
    "sr_cis_no_text",
    "sr_cis_random_route",
    "sr_cis_no_lora",
    "sr_cis_pixel_replay",
    "seq_lora",
    "seq_lora_random_head",
    "simple_cil",
    "mllm_zero_shot",
)

_DATASET_CLASSES = {"digits": 10, "cifar100": 100, "imagenet_r": 200, "domainnet": 345}


@dataclass
class LoraSpec(Config):
    """Task LoRA, the "parameter memory" of a region (``B`` zero-initialised, so a new region starts as
    the frozen backbone) (ours)."""

    r: int = field(10, help="LoRA rank (10 for CIFAR100/ImageNet-R, 30 for DomainNet, as InfLoRA)", ge=1)
    alpha: float = field(10.0, help="LoRA alpha (update scaled by alpha / r)", gt=0)
    targets: list[str] = field(
        default_factory=lambda: ["query", "value"], help="attention projections that get a LoRA"
    )
    dropout: float = field(0.0, help="LoRA dropout", ge=0, lt=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.targets:
            raise ConfigError("lora.targets must name at least one module (e.g. [query, value])")


@dataclass
class TinyViTConfig(Config):
    """A random ViT built from a config, used offline instead of a hub id (ours)."""

    image_size: int = field(16, help="input side in pixels", ge=1)
    patch_size: int = field(4, help="patch side in pixels", ge=1)
    hidden_size: int = field(32, help="token width", ge=1)
    num_hidden_layers: int = field(2, help="transformer blocks", ge=1)
    num_attention_heads: int = field(4, help="attention heads", ge=1)
    intermediate_size: int = field(64, help="MLP width", ge=1)
    num_channels: int = field(3, help="input channels", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"tiny.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"tiny.hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}"
            )


@dataclass
class SmallModelConfig(Config):
    """Frozen pre-trained ViT with one peft LoRA per memory region (the paper's small model; form ours)."""

    model_id: str | None = field(
        "google/vit-base-patch16-224-in21k",
        help="HF hub id or local folder of the ViT; null = tiny random ViT",
    )
    tiny: TinyViTConfig = field(
        default_factory=TinyViTConfig, help="the random ViT used when model_id is null"
    )
    lora: LoraSpec = field(default_factory=LoraSpec, help="task LoRA")
    feature: Literal["cls", "mean"] = field(
        "cls", help="feature h(x): CLS token or token mean after the final LayerNorm"
    )
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5], help="per-channel input mean")
    image_std: list[float] = field(
        default_factory=lambda: [0.5, 0.5, 0.5], help="per-channel input std", gt=0
    )


@dataclass
class STMConfig(Config):
    """Training of one short-term-memory slot: a fresh LoRA + a prototype head on the task's data (ours)."""

    epochs: int = field(
        20, help="epochs per task (20 CIFAR100, 50 ImageNet-R, 5 DomainNet: InfLoRA budgets)", ge=0
    )
    lr: float = field(5e-4, help="Adam learning rate of the LoRA and the head", gt=0)
    batch_size: int = field(128, help="global batch size (divided over the processes)", ge=1)
    weight_decay: float = field(0.0, help="Adam weight decay", ge=0)
    milestones: list[float] = field(
        default_factory=lambda: [0.6, 0.8], help="lr steps, as fractions of the epochs", ge=0, le=1
    )
    gamma: float = field(0.1, help="lr factor at each milestone", gt=0, le=1)
    prototype_norm: Literal["euclid", "cosine"] = field(
        "euclid", help="euclid: P=p_c, b=-||p_c||^2/2 (NCM as a linear layer); cosine: cos(h, p_c)/tau"
    )
    prototype_tau: float = field(0.1, help="temperature of the cosine head", gt=0)
    train_head: bool = field(True, help="train the head with the LoRA (false: pure prototype head)")
    train_lora: bool = field(True, help="train the task LoRA (false: frozen backbone, the LoRA ablation)")
    refresh_prototypes: bool = field(
        True, help="after training, reset the head to the class means of the adapted features"
    )


@dataclass
class TextMemoryConfig(Config):
    """Textual scenario memory: descriptions per class instead of images (paper: idea; prompt ours)."""

    n_desc: int = field(
        20, help="descriptions per class (images described, then scenes replayed per class)", ge=1
    )
    describe_mode: Literal["mllm", "class_name_only"] = field(
        "mllm",
        help="mllm: the large model describes n_desc training images; class_name_only: store 'a photo of a <name>'",
    )
    max_new_tokens: int = field(60, help="tokens per description", ge=1)


@dataclass
class GeneratorConfig(Config):
    """Scenario Replay Module generator (paper: SDXL; settings ours)."""

    kind: Literal["sdxl", "gaussian"] = field(
        "sdxl",
        help="sdxl: text-to-image with diffusers (sr-cis[diffusion], the paper's); gaussian: offline stand-in",
    )
    gaussian_source: Literal["corpus", "task"] = field(
        "corpus",
        help="corpus: a frozen class-name-conditioned pixel model fitted once on a pre-training corpus (memory "
        "holds only text); task: pixel statistics of each task's images kept in memory (earlier variant)",
    )
    model_id: str = field("stabilityai/stable-diffusion-xl-base-1.0", help="SDXL hub id or folder")
    steps: int = field(30, help="SDXL denoising steps", ge=1)
    guidance: float = field(7.0, help="SDXL classifier-free guidance scale", ge=0)
    gen_size: int = field(1024, help="SDXL output side (then resized to out_size)", ge=8)
    out_size: int = field(224, help="side of the replayed images", ge=1)
    gaussian_rank: int = field(8, help="rank of the Gaussian pixel model's covariance", ge=0)
    gaussian_noise: float = field(1.0, help="scale of the sampled deviation (1 = fitted covariance)", ge=0)


@dataclass
class RestructureConfig(Config):
    """STM -> LTM memory restructuring (paper: periodic restructuring; procedure ours)."""

    period: int | Literal["end"] | None = field(
        2, help="R: restructure after every R tasks; end: once after the last task; null: never", ge=1
    )
    merge: Literal["cat", "svd"] = field(
        "cat", help="exact peft merge of the LoRA deltas (svd: truncated to svd_rank)"
    )
    svd_rank: int | None = field(None, help="rank of the svd merge (null: 2 r)", ge=1)
    epochs: int = field(5, help="fine-tuning epochs on the replayed scenes", ge=0)
    lr: float = field(1e-4, help="AdamW learning rate of the fine-tuning", gt=0)
    batch_size: int = field(64, help="global batch size of the fine-tuning", ge=1)
    weight_decay: float = field(0.01, help="AdamW weight decay", ge=0)
    kd_beta: float = field(1.0, help="weight of the distillation from each class's previous region", ge=0)
    kd_temperature: float = field(2.0, help="distillation temperature", gt=0)
    refresh_ltm_prototypes: bool = field(False, help="reset LTM prototypes on the replayed scenes")
    train_head: bool = field(True, help="fine-tune the merged head too")
    train_lora: bool = field(
        True, help="fine-tune the merged LoRA (false with stm.train_lora=false: no LoRA at all)"
    )


@dataclass
class FastPathConfig(Config):
    """Fast inference over the memory regions (ours)."""

    routing: Literal["frozen_prototype", "nearest_prototype", "max_conf", "ltm_only"] = field(
        "frozen_prototype",
        help="frozen_prototype: the region of the nearest class mean in the frozen backbone's features, then "
        "that region's head answers; nearest_prototype: the class with the smallest ||h_r - p_c|| over all "
        "regions, each in its own adapted features; max_conf: the region with the largest max-softmax "
        "(earlier rule); ltm_only: the LTM alone",
    )
    top_k: int = field(3, help="candidate classes handed to the large model", ge=1)
    batch_size: int = field(256, help="inference batch size", ge=1)


@dataclass
class CAOADConfig(Config):
    """Confidence-Aware Online Anomaly Detection: which test samples go to the large model (rule ours;
    z-score threshold from the ICL code, see ``ca_oad``)."""

    enabled: bool = field(True, help="route flagged samples to the slow path")
    score: Literal["distance_margin", "margin", "max_prob", "max_logit", "energy"] = field(
        "distance_margin",
        help="distance_margin: gap between the two nearest prototypes over all regions; margin: top-1 minus "
        "top-2 probability; max_prob (earlier default); max_logit; energy: logsumexp of the logits",
    )
    rule: Literal["quantile", "zscore"] = field(
        "quantile",
        help="quantile: flag scores below the route_share quantile of the stream so far (calibrated); "
        "zscore: flag (s - mean) / std < -z_threshold (earlier rule)",
    )
    route_share: float = field(0.2, help="share of the stream the quantile rule routes", gt=0, lt=1)
    z_threshold: float = field(
        0.842, help="z-score threshold (0.842 = 20 % lower tail of N(0, 1), ICL code)", ge=0
    )
    warmup: int = field(
        32, help="samples judged by the batch rule before the online statistics take over", ge=0
    )
    scope: Literal["online", "batch"] = field(
        "online", help="online: statistics over the stream; batch: per mini-batch (ICL)"
    )
    random_fraction: float | None = field(
        None, help="route this fraction at random instead (SRCISRandomRoute)", ge=0, le=1
    )


@dataclass
class SlowPathConfig(Config):
    """Large-model deliberation over the fast path's candidates (prompt and parsing: ICL code)."""

    enabled: bool = field(True, help="use the large model on routed samples")
    model_id: str | None = field(
        None, help="HF image-text-to-text id or folder; null: the caller passes a model"
    )
    answer_mode: Literal["generate", "loglik"] = field(
        "generate",
        help="generate: parse the answer (one hit or keep the fast label); loglik: best-scored candidate",
    )
    max_new_tokens: int = field(128, help="answer tokens", ge=1)
    match_mode: Literal["substring", "word"] = field(
        "substring", help="how a candidate name is found in the answer"
    )
    batch_size: int = field(8, help="images per large-model call", ge=1)


@dataclass
class SRCISConfig(Config):
    """The whole system."""

    small: SmallModelConfig = field(default_factory=SmallModelConfig, help="small model")
    stm: STMConfig = field(default_factory=STMConfig, help="short-term memory training")
    text: TextMemoryConfig = field(default_factory=TextMemoryConfig, help="text memory")
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, help="scenario replay generator")
    restructure: RestructureConfig = field(default_factory=RestructureConfig, help="STM -> LTM")
    fast: FastPathConfig = field(default_factory=FastPathConfig, help="fast path")
    caoad: CAOADConfig = field(default_factory=CAOADConfig, help="CA-OAD")
    slow: SlowPathConfig = field(default_factory=SlowPathConfig, help="slow path")
    device: str = field("auto", help="auto, cpu, cuda, cuda:1 (under torchrun: cuda:<local rank>)")
    progress: bool = field(True, help="progress bars (rank 0 only)")
    num_workers: int = field(0, help="DataLoader workers for image datasets", ge=0)


@dataclass
class DataConfig(Config):
    """Benchmark splits (paper: CIFAR100, ImageNet-R, DomainNet; splits follow InfLoRA / LAMDA-PILOT)."""

    name: Literal["digits", "cifar100", "imagenet_r", "domainnet"] = field("digits", help="dataset")
    root: str = field("data", help="folder holding the datasets")
    num_tasks: int = field(5, help="tasks (equal class blocks)", ge=1)
    class_order_seed: int | None = field(1993, help="class order seed (1993 PyCIL, 0 InfLoRA); null: sorted")
    shots: int | None = field(None, help="few-shot: training images per class", ge=1)
    image_size: int = field(224, help="input side for the real datasets", ge=8)
    test_frac: float = field(0.2, help="ImageNet-R test share (24k/6k split)", gt=0, lt=1)
    download: bool = field(False, help="let torchvision download CIFAR100")
    domainnet_domains: list[str] = field(
        default_factory=lambda: ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"],
        help="DomainNet domains",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        n = _DATASET_CLASSES[self.name]
        if self.num_tasks > n:
            raise ConfigError(f"data: the {n}-class {self.name} cannot be split into {self.num_tasks} tasks")


@dataclass
class QuickConfig(Config):
    """Options of the quick reproduction only (ignored by ``train``)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], help="seeds of the quick run", ge=0)
    full_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], help="seeds of quick --full", ge=0)
    oracle_accuracy: float = field(
        0.9,
        help="scripted large model: right with this probability when the true class is a candidate",
        ge=0,
        le=1,
    )
    tiny_llava: bool = field(
        True, help="also run the slow path through a tiny random LLaVA (plumbing, seed 0)"
    )
    few_shot: int | None = field(
        5, help="also run the few-shot protocol with this many images per class", ge=1
    )
    few_shot_epochs: int = field(10, help="STM epochs of the few-shot protocol", ge=0)


@dataclass
class ExperimentConfig(Config):
    """One paper table: data + system + the methods run on the same runner."""

    name: str = field("experiment", help="run name (folder under out_dir)")
    seed: int = field(0, help="seed of every generator of the run", ge=0)
    data: DataConfig = field(default_factory=DataConfig, help="benchmark")
    system: SRCISConfig = field(default_factory=SRCISConfig, help="SR-CIS and the shared small model")
    methods: list[str] = field(
        default_factory=lambda: ["sr_cis"], help=f"methods to run, from {list(METHOD_NAMES)}"
    )
    seq_lora_epochs: int | None = field(None, help="SeqLoRA epochs per task (null: stm.epochs)", ge=0)
    out_dir: str = field("runs/sr-cis", help="output folder")
    checkpoint_keep: int = field(2, help="checkpoints kept per method", ge=1)
    pretrain_epochs: int = field(
        0, help="tiny random backbone only: supervised warm-up epochs on a held-out split", ge=0
    )
    pretrain_frac: float = field(
        0.3, help="share of the training pool kept for that warm-up (then dropped)", gt=0, lt=1
    )
    pretrain_lr: float = field(1e-3, help="Adam learning rate of the warm-up", gt=0)
    pretrain_batch_size: int = field(32, help="batch size of the warm-up", ge=1)
    max_eval_samples: int | None = field(None, help="cap per evaluation (null: every test sample)", ge=1)
    quick: QuickConfig = field(default_factory=QuickConfig, help="quick reproduction only")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or not self.methods:
            raise ConfigError(
                f"methods: unknown {unknown or '(empty list)'}; choose from {list(METHOD_NAMES)}"
            )
        if self.pretrain_epochs and self.system.small.model_id is not None:
            raise ConfigError(
                "pretrain_epochs > 0 warms up a tiny random ViT only; set system.small.model_id=null or pretrain_epochs=0"
            )
        gen = self.system.generator
        uses_replay = self.system.restructure.period is not None
        if (
            uses_replay
            and gen.kind == "gaussian"
            and gen.gaussian_source == "corpus"
            and not self.pretrain_epochs
        ):
            raise ConfigError(
                "generator.gaussian_source=corpus needs a pre-training corpus (pretrain_epochs > 0, tiny ViT); "
                "use generator.kind=sdxl, or gaussian_source=task"
            )
