"""Typed configs (spec §3.8 defaults). ``[ours]`` choices are fields with the spec's default; official-code
quirks are ``legacy_*`` switches, off by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AutoSwitchConfig",
    "BaselineConfig",
    "ExperimentConfig",
    "LoraTrainConfig",
    "QuickConfig",
    "SwitchConfig",
]


@dataclass
class SwitchConfig:
    """T-Switch compression (spec §3.2, §3.6)."""

    drop_ratio: float = 0.6  # r; > 1 read as a percentage (code)
    group_size: int = 4  # g of the bit format
    scale: Literal["tensor", "global"] = "tensor"  # lambda per tensor (code) or one per task [ours]
    scope: Literal["tensor", "global"] = "tensor"  # per-tensor thresholds (code) or global [ours]
    layout: Literal["interleaved", "planar"] = "interleaved"  # bit order: spec/code or planar [ours]
    exclude: list[str] = field(default_factory=lambda: ["classifier"])  # names left out of task vectors
    keep_zero_tensors: bool = False  # store all-zero tensors (lambda 0) instead of skipping (ViT code)
    legacy_float_floor: bool = False  # the code's float int((1 - r) n) (see t_switch.sparsify)


@dataclass
class AutoSwitchConfig:
    """Auto-Switch retrieval (spec §3.4)."""

    k: int = 10  # neighbours (ViT 10, RoBERTa 5)
    n_query: int = 100  # query samples per task
    mode: Literal["soft", "hard"] = "soft"  # ViT soft, RoBERTa hard
    granularity: Literal["batch", "sample"] = "batch"  # code: batch mean; per-sample [ours]
    metric: Literal["euclidean", "cosine"] = "euclidean"
    backend: Literal["torch", "sklearn"] = "torch"
    lora_mix: Literal["factors", "product"] = "factors"  # LoRA: mix A and B separately (code)


@dataclass
class BaselineConfig:
    """Baselines of spec §4, sharing one evaluator."""

    methods: list[str] = field(
        default_factory=lambda: [
            "individual",
            "weight_averaging",
            "task_arithmetic",
            "ties",
            "emr",
            "tall_masks",
        ]
    )
    ta_alpha: float = 0.3
    ta_alpha_grid: list[float] = field(default_factory=list)  # non-empty: choose alpha on validation data
    ties_k: float = 0.2
    ties_alpha: float = 0.3
    ties_trim_scope: Literal["global", "tensor"] = "global"
    dare_p: float = 0.9
    dare_base: Literal["task_arithmetic", "ties"] = "task_arithmetic"
    tall_lambda: float = 0.4
    consensus_min_agree: int = 2
    consensus_alpha: float = 0.3

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
class LoraTrainConfig:
    """LoRA fine-tuning of the ViT-LoRA table (spec §3.5, code)."""

    rank: int = 64
    alpha: int = 128  # 2 * rank
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["patch_embedding", "fc1", "fc2"])
    lr: float = 1e-4
    epochs: int = 20
    step_size: int = 10
    gamma: float = 0.5
    batch_size: int = 128
    max_train_samples: int = 0  # 0 = whole training split


@dataclass
class ExperimentConfig:
    """A paper table: ViT (8 vision tasks), ViT-LoRA or RoBERTa-GLUE (spec §5)."""

    name: str = "vit_b32"
    kind: Literal["vit", "vit_lora", "glue"] = "vit"
    tasks: list[str] = field(
        default_factory=lambda: ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    )
    pretrained: str = "openai/clip-vit-base-patch32"  # hub id or local folder
    finetuned: str = "tanganke/clip-vit-base-patch32_{task_lower}"  # template; {task}, {task_lower}
    finetuned_subfolder: str = ""  # template for checkpoints stored in sub-folders of one repo
    datasets: dict[str, str] = field(default_factory=dict)  # task -> HF dataset id[:config] or folder
    eval_split: str = "test"
    eval_subset: int = 0  # first N test examples per task (GLUE code: 500); 0 = all
    batch_size: int = 256
    max_length: int = 128
    val_fraction: float = 0.1  # GLUE: held-out share of train (alpha selection), seed 0
    seed: int = 0
    device: str = "auto"
    out_dir: str = "results/t-switch"
    stages: list[str] = field(default_factory=lambda: ["baselines", "t_switch", "auto_switch", "storage"])
    pulse_ratios: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    auto: AutoSwitchConfig = field(default_factory=AutoSwitchConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)


@dataclass
class QuickConfig:
    """Digits four-domain experiment (spec §8)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    hidden: int = 512
    feature_dim: int = 64
    pretrain_epochs: int = 1
    pretrain_lr: float = 1e-3
    finetune_epochs: int = 10
    finetune_lr: float = 1e-4
    batch_size: int = 64
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    ta_alphas: list[float] = field(default_factory=lambda: [0.3, 0.5, 1.0])
    auto_ratio: float = 0.6
    n_query: int = 30
    knn_k: int = 5
    eval_batch_size: int = 64
    group_size: int = 4
    baselines: list[str] = field(default_factory=lambda: ["weight_averaging", "ties", "emr", "tall_masks"])
