"""Configs of every table, validated when built (:class:`papers_shared.config.Config`).

One top-level :class:`ExperimentConfig` serves every command: a paper table (``kind`` = ``vit``,
``vit_lora``, ``glue``) or the digits table of the quick reproduction (``kind = digits``, section
``digits``). Defaults follow the official run scripts (lfy-123/Binary-Task-Switch at 68bfda8,
``merge_vit/run_merge_vit.sh``, ``merge_lm/run_merge_roberta.sh``); our own choices are fields marked
"(ours)"; quirks of the official code are ``legacy_*`` switches, off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from papers_shared.config import Config, ConfigError, field

__all__ = [
    "DIGIT_DOMAINS",
    "DIGIT_FEATURES",
    "GLUE_TASKS",
    "AutoSwitchConfig",
    "BaselineConfig",
    "DigitsConfig",
    "ExperimentConfig",
    "LoraTrainConfig",
    "METHODS",
    "STAGES",
    "SwitchConfig",
]

#: merging methods under one signature (t_switch.baselines.BASELINES)
METHODS = (
    "individual",
    "weight_averaging",
    "task_arithmetic",
    "ties",
    "dare",
    "emr",
    "tall_masks",
    "consensus",
    "t_switch",
)
#: stages of a merging table (t_switch.experiment.run_merging)
STAGES = ("pretrained", "baselines", "t_switch", "auto_switch", "storage", "pulse")
#: features the digits router may use, deepest first (ties go to the earlier one): the pre-trained body's
#: output (the analogue of the CLIP image embedding the official ViT code uses), its second / first hidden
#: layer, or the input itself
DIGIT_FEATURES = ("body", "hidden2", "hidden1", "input")
#: the GLUE tasks of the RoBERTa table
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
#: the four input domains of the digits table (one label space)
DIGIT_DOMAINS = ("hflip", "invert", "permute", "rot90")


def _check_members(name: str, values, allowed) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{name}: {bad} not among {list(allowed)}")


@dataclass
class SwitchConfig(Config):
    """T-Switch compression: per-sign dropping, binarization, bit packing."""

    drop_ratio: float = field(
        0.6,
        ge=0.0,
        lt=100.0,
        help="drop ratio r of the activation switch; r > 1 is read as a percentage (official code)",
    )
    group_size: int = field(4, ge=1, le=64, help="group size g of the bit format")
    scale: Literal["tensor", "global"] = field(
        "tensor", help="lambda per tensor (official code) or one per task vector (ours)"
    )
    scope: Literal["tensor", "global"] = field(
        "tensor", help="per-tensor drop thresholds (official code) or one over the task vector (ours)"
    )
    layout: Literal["interleaved", "planar"] = field(
        "interleaved", help="bit order: the official record layout or all flags/positions/signs (ours)"
    )
    exclude: list[str] = field(
        default_factory=lambda: ["classifier"], help="name substrings left out of task vectors (heads)"
    )
    keep_zero_tensors: bool = field(
        False, help="store all-zero tensors with lambda 0 instead of skipping them (ViT code skips)"
    )
    unexpected_keys: Literal["warn", "error", "ignore"] = field(
        "warn", help="a fine-tuned file holding tensors the pre-trained one lacks: warn, error or ignore"
    )
    legacy_float_floor: bool = field(
        False, help="the official float int((1 - r) n) keep count (one entry fewer at some r, n)"
    )


@dataclass
class AutoSwitchConfig(Config):
    """Auto-Switch retrieval (official ``infer_with_knn_and_task_features``)."""

    k: int = field(10, ge=1, help="neighbours of the k-NN router (ViT 10, RoBERTa 5)")
    n_query: int = field(100, ge=1, help="query samples per task")
    mode: Literal["soft", "hard"] = field("soft", help="soft weights (ViT code) or argmax (RoBERTa code)")
    granularity: Literal["batch", "sample"] = field(
        "batch", help="one combination per batch (official code) or per sample (ours)"
    )
    temperature: float = field(
        1.0,
        gt=0.0,
        help="soft weights w ~ p^(1/T) (ours); 1 = the official batch-mean k-NN vote shares",
    )
    metric: Literal["euclidean", "cosine"] = field("euclidean", help="k-NN distance (code: euclidean)")
    backend: Literal["torch", "sklearn"] = field("torch", help="k-NN implementation")
    lora_mix: Literal["factors", "product"] = field(
        "factors", help="LoRA: mix A and B separately (official code) or mix the products B A (ours)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode == "hard" and self.temperature != 1.0:
            raise ConfigError("auto.temperature only shapes soft weights; mode=hard ignores it (set it to 1)")


@dataclass
class BaselineConfig(Config):
    """The training-free baselines, sharing one evaluator."""

    methods: list[str] = field(
        default_factory=lambda: [
            "individual",
            "weight_averaging",
            "task_arithmetic",
            "ties",
            "emr",
            "tall_masks",
        ],
        help=f"baselines to run, of {list(METHODS)}",
    )
    ta_alpha: float = field(0.3, gt=0.0, help="Task Arithmetic scaling alpha")
    ta_alpha_grid: list[float] = field(
        default_factory=list, gt=0.0, help="non-empty: choose alpha on the validation split from this grid"
    )
    ties_k: float = field(0.2, gt=0.0, le=1.0, help="TIES: kept fraction of magnitudes")
    ties_alpha: float = field(0.3, gt=0.0, help="TIES: scaling of the merged vector")
    ties_trim_scope: Literal["global", "tensor"] = field(
        "global", help="TIES trimming threshold per task vector (TIES code) or per tensor"
    )
    dare_p: float = field(0.9, ge=0.0, lt=1.0, help="DARE drop probability")
    dare_base: Literal["task_arithmetic", "ties"] = field("task_arithmetic", help="method DARE wraps")
    tall_lambda: float = field(0.4, ge=0.0, help="TALL masks lambda_t")
    consensus_min_agree: int = field(2, ge=1, help="Consensus: masks that must agree")
    consensus_alpha: float = field(0.3, gt=0.0, help="Consensus: Task Arithmetic alpha")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_members("baselines.methods", self.methods, METHODS)

    def hyper(self, method: str) -> dict:
        """Keyword arguments of ``method`` under the shared baseline signature."""
        return {
            "task_arithmetic": {"alpha": self.ta_alpha},
            "ties": {"k": self.ties_k, "alpha": self.ties_alpha, "trim_scope": self.ties_trim_scope},
            "dare": {"p": self.dare_p, "base": self.dare_base, "alpha": self.ta_alpha},
            "tall_masks": {"lambda_t": self.tall_lambda},
            "consensus": {
                "lambda_t": self.tall_lambda,
                "min_agree": self.consensus_min_agree,
                "alpha": self.consensus_alpha,
            },
        }.get(method, {})


@dataclass
class LoraTrainConfig(Config):
    """LoRA fine-tuning of the ViT-LoRA table (official ``merge_vit_lora.py``)."""

    rank: int = field(64, ge=1, help="LoRA rank")
    alpha: float = field(128.0, gt=0.0, help="LoRA alpha (official: 2 * rank)")
    dropout: float = field(0.1, ge=0.0, lt=1.0, help="LoRA dropout")
    target_modules: list[str] = field(
        default_factory=lambda: ["patch_embedding", "fc1", "fc2"],
        help="modules with LoRA (open_clip conv1/c_fc/c_proj in transformers names)",
    )
    lr: float = field(1e-4, gt=0.0, help="Adam learning rate")
    epochs: int = field(20, ge=1, help="training epochs per task")
    step_size: int = field(10, ge=1, help="StepLR step (epochs)")
    gamma: float = field(0.5, gt=0.0, le=1.0, help="StepLR decay")
    batch_size: int = field(128, ge=1, help="training batch size")
    max_train_samples: int = field(0, ge=0, help="first N training samples per task; 0 = all")


@dataclass
class DigitsConfig(Config):
    """The digits table of the quick reproduction: four input domains with one label space (ours)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], ge=0, help="seeds (paired claims)")
    hidden: int = field(512, ge=1, help="hidden width of the MLP")
    feature_dim: int = field(64, ge=1, help="width of the body output (the shared head's input)")
    pretrain_epochs: int = field(1, ge=1, help="epochs of the generalist on all domains")
    pretrain_lr: float = field(1e-3, gt=0.0, help="Adam learning rate of the generalist")
    finetune_epochs: int = field(10, ge=1, help="epochs of each domain specialist (body only)")
    finetune_lr: float = field(1e-4, gt=0.0, help="Adam learning rate of the specialists")
    batch_size: int = field(64, ge=1, help="training batch size")
    val_fraction: float = field(
        0.2, gt=0.0, lt=1.0, help="share of the training split held out for choosing the router"
    )
    ratios: list[float] = field(
        default_factory=lambda: [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9],
        ge=0.0,
        le=1.0,
        help="drop ratios of the pulse curve (must include 0 and 0.5)",
    )
    ta_alphas: list[float] = field(
        default_factory=lambda: [0.3, 0.5, 1.0], gt=0.0, help="Task Arithmetic grid"
    )
    auto_ratio: float = field(0.6, ge=0.0, le=1.0, help="drop ratio of the switches Auto-Switch combines")
    n_query: int = field(30, ge=1, help="query samples per domain")
    knn_k: int = field(5, ge=1, help="k of the paper-protocol router (features = body output)")
    eval_batch_size: int = field(64, ge=1, help="evaluation batch size (one Auto-Switch combination each)")
    group_size: int = field(4, ge=1, le=64, help="group size of the bit format")
    baselines: list[str] = field(
        default_factory=lambda: ["weight_averaging", "ties", "emr", "tall_masks"],
        help="baselines besides Individual and Task Arithmetic",
    )
    router_features: list[str] = field(
        default_factory=lambda: list(DIGIT_FEATURES),
        help=f"router features to try, of {list(DIGIT_FEATURES)}",
    )
    router_ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20], ge=1, help="router k to try")
    router_temperatures: list[float] = field(
        default_factory=lambda: [1.0, 0.5, 0.25, 0.1], gt=0.0, help="router temperatures to try"
    )
    routing_threshold: float = field(
        90.0,
        ge=0.0,
        le=100.0,
        help="claimed per-sample routing accuracy (%) of the selected router on the test split",
    )
    paired_margin: float = field(
        0.5, ge=0.0, help="X of 'binarized within X points of sparse-only' (non-inferiority margin)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.seeds:
            raise ConfigError("digits.seeds must name at least one seed")
        for r in (0.0, 0.5):
            if r not in self.ratios:
                raise ConfigError(f"digits.ratios must include {r} (the claims compare r=0.5 with r=0)")
        if not self.ta_alphas:
            raise ConfigError("digits.ta_alphas must hold at least one alpha")
        _check_members("digits.baselines", self.baselines, METHODS)
        _check_members("digits.router_features", self.router_features, DIGIT_FEATURES)
        if not (self.router_features and self.router_ks and self.router_temperatures):
            raise ConfigError("digits.router_features, router_ks and router_temperatures must not be empty")
        too_big = [k for k in (self.knn_k, *self.router_ks) if k > 4 * self.n_query]
        if too_big:
            raise ConfigError(f"digits: k {too_big} exceeds the {4 * self.n_query} query samples (4 domains)")


@dataclass
class ExperimentConfig(Config):
    """A table: ViT (8 vision tasks), ViT-LoRA, RoBERTa-GLUE, or the digits table of the quick run."""

    name: str = field("vit_b32", help="table name (results go to <out_dir>/<name>)")
    kind: Literal["vit", "vit_lora", "glue", "digits"] = field("vit", help="which table")
    tasks: list[str] = field(
        default_factory=lambda: ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"],
        help="task names (datasets and fine-tuned checkpoints are found from them)",
    )
    pretrained: str = field("openai/clip-vit-base-patch32", help="hub id or local folder of theta_0")
    finetuned: str = field(
        "tanganke/clip-vit-base-patch32_{task_lower}",
        help="fine-tuned checkpoint template ({task}, {task_lower})",
    )
    finetuned_subfolder: str = field("", help="template of a sub-folder inside the fine-tuned repo")
    datasets: dict[str, str] = field(default_factory=dict, help="task -> HF dataset id[:config] or folder")
    eval_split: str = field("test", help="evaluation split")
    eval_subset: int = field(0, ge=0, help="first N evaluation examples per task (GLUE code: 500); 0 = all")
    batch_size: int = field(256, ge=1, help="evaluation batch size (one Auto-Switch combination each)")
    max_length: int = field(128, ge=1, help="GLUE: tokenizer max length")
    num_workers: int = field(4, ge=0, help="data-loader worker processes per process (image decoding)")
    val_fraction: float = field(0.1, gt=0.0, lt=1.0, help="GLUE: held-out share of train (alpha selection)")
    seed: int = field(0, ge=0, help="seed of data order and held-out splits")
    device: str = field("auto", help="cpu, cuda, cuda:1 or auto (under torchrun: one GPU per rank)")
    out_dir: str = field("results/t-switch", help="output folder")
    stages: list[str] = field(
        default_factory=lambda: ["baselines", "t_switch", "auto_switch", "storage"],
        help=f"stages to run, of {list(STAGES)}",
    )
    pulse_ratios: list[float] = field(
        default_factory=lambda: [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
        ge=0.0,
        le=1.0,
        help="drop ratios of the pulse stage",
    )
    switch: SwitchConfig = field(default_factory=SwitchConfig, help="T-Switch compression")
    auto: AutoSwitchConfig = field(default_factory=AutoSwitchConfig, help="Auto-Switch retrieval")
    baselines: BaselineConfig = field(default_factory=BaselineConfig, help="baselines")
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig, help="LoRA fine-tuning (kind=vit_lora)")
    digits: DigitsConfig = field(default_factory=DigitsConfig, help="digits table (kind=digits)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_members("stages", self.stages, STAGES)
        if not self.tasks:
            raise ConfigError("tasks must name at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks holds duplicates: {self.tasks}")
        if "auto_switch" in self.stages and self.kind != "digits":
            available = self.auto.n_query * len(self.tasks)
            if self.auto.k > available:
                raise ConfigError(
                    f"auto.k={self.auto.k} exceeds the {available} query samples "
                    f"(auto.n_query={self.auto.n_query} x {len(self.tasks)} tasks)"
                )
        if self.kind == "digits":
            _check_members("tasks (kind=digits)", self.tasks, DIGIT_DOMAINS)
        if self.kind == "glue":
            _check_members("tasks (kind=glue)", self.tasks, GLUE_TASKS)
        if self.kind == "vit_lora" and not self.lora.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (kind=vit_lora)")
