"""SR-CIS: Self-Reflective Complementary Incremental System (Qi et al., arXiv 2408.01970).

CIM (small ViT + peft LoRA fast path, large multimodal model slow path, CA-OAD gate), CMM (STM slots and a
merged LTM; textual scenario memory) and SRM (scenario replay from the text for STM -> LTM restructuring).
"""

from sr_cis.baselines import MLLMZeroShot, SeqLoRA, SimpleCIL, import_results_table, variant_config
from sr_cis.ca_oad import OnlineConfidenceAnomalyDetector, RandomRouter, confidence_score
from sr_cis.clip_model import CLIPCandidateLargeModel
from sr_cis.config import (
    CAOADConfig,
    DataConfig,
    ExperimentConfig,
    FastPathConfig,
    GeneratorConfig,
    LoraSpec,
    QuickConfig,
    RestructureConfig,
    SlowPathConfig,
    SmallModelConfig,
    SRCISConfig,
    STMConfig,
    TextMemoryConfig,
    TinyViTConfig,
)
from sr_cis.fast_path import FastInference, FastOutput, route
from sr_cis.memory import ComplementaryMemory, Region
from sr_cis.prototypes import PrototypeHead, compute_prototypes, concat_heads
from sr_cis.scenario import DiffusersSDXLGenerator, GaussianPixelGenerator, ScenarioGenerator, build_generator
from sr_cis.slow_path import SlowPath, build_large_model, parse_choice
from sr_cis.small_model import SmallModel, build_small_model
from sr_cis.system import SRCIS, RestructureReport, restructure_due
from sr_cis.text_memory import CHOOSE_TEMPLATE, DESCRIBE_TEMPLATE, TextMemory, choose_prompt
from sr_cis.trainer import fit, pretrain_backbone, train_stm

__all__ = [
    "CAOADConfig",
    "CLIPCandidateLargeModel",
    "CHOOSE_TEMPLATE",
    "ComplementaryMemory",
    "DESCRIBE_TEMPLATE",
    "DataConfig",
    "DiffusersSDXLGenerator",
    "ExperimentConfig",
    "FastInference",
    "FastOutput",
    "FastPathConfig",
    "GaussianPixelGenerator",
    "GeneratorConfig",
    "LoraSpec",
    "MLLMZeroShot",
    "OnlineConfidenceAnomalyDetector",
    "PrototypeHead",
    "QuickConfig",
    "RandomRouter",
    "Region",
    "RestructureConfig",
    "RestructureReport",
    "SRCIS",
    "SRCISConfig",
    "STMConfig",
    "ScenarioGenerator",
    "SeqLoRA",
    "SimpleCIL",
    "SlowPath",
    "SlowPathConfig",
    "SmallModel",
    "SmallModelConfig",
    "TextMemory",
    "TextMemoryConfig",
    "TinyViTConfig",
    "build_generator",
    "build_large_model",
    "build_small_model",
    "choose_prompt",
    "compute_prototypes",
    "concat_heads",
    "confidence_score",
    "fit",
    "import_results_table",
    "parse_choice",
    "pretrain_backbone",
    "restructure_due",
    "route",
    "train_stm",
    "variant_config",
]
