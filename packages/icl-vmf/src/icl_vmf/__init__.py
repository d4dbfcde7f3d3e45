"""icl_vmf: Interactive Continual Learning with fast (ViT + CL-vMF memory) and slow (multimodal LLM) thinking.

Qi et al., "Interactive Continual Learning: Fast and Slow Thinking", CVPR 2024 (arXiv 2403.02628).
Docstrings cite the paper (sections) and the official code (Biqing-Qi/Interactive-continual-Learning-Fast-
and-Slow-Thinking, ``file:function`` at commit 8c8ad10); ``docs/methods/icl-vmf.md`` maps every component.
"""

from icl_vmf.augment import ViewAugment, random_hflip
from icl_vmf.baselines import ReplayHeadLearner, system2_zero_shot
from icl_vmf.buffer import ClassBalancedReservoir
from icl_vmf.ckt_mha import CKTMHA, query_embedding
from icl_vmf.cl_vmf import ICLLearner, Set2SetObjective
from icl_vmf.config import (
    AugmentConfig,
    BaselineConfig,
    DataConfig,
    ExperimentConfig,
    LossConfig,
    ODIConfig,
    System1Config,
    System2Config,
    TrainConfig,
)
from icl_vmf.data import StreamData, build_stream
from icl_vmf.em import EMSchedule
from icl_vmf.encoders import (
    FrozenViTEncoder,
    ViTEncoder,
    build_vit,
    prepare_encoder,
    pretrain_encoder,
    tiny_vit_config,
)
from icl_vmf.evaluation import StreamResult, evaluate
from icl_vmf.experiment import evaluate_checkpoint, load_trained, run_experiment, summarize
from icl_vmf.interaction import InteractionInfo, InteractionStats, InteractiveClassifier
from icl_vmf.learner import Learner, build_learner
from icl_vmf.losses import cl_vmf_loss, vmf_margin_regularizer, vmf_set2set_loss
from icl_vmf.memory import VMFValueMemory
from icl_vmf.odi import VMFOutlierDetector
from icl_vmf.system1 import System1, build_system1
from icl_vmf.system2 import (
    DESCRIBE_PROMPT,
    MINIGPT4_TEMPLATE,
    PUREMM_TEMPLATE,
    CLIPCandidateSystem2,
    HFVisionLanguageSystem2,
    MLLMSystem2,
    OracleSystem2,
    ScriptedSystem2,
    System2,
    TwoTurnSystem2,
    build_system2,
    format_candidates,
    format_prompt,
    parse_answer,
)
from icl_vmf.trainer import global_batches, run_stream

__version__ = "0.1.0"

__all__ = [
    "global_batches",
    "summarize",
    "prepare_encoder",
    "load_trained",
    "evaluate_checkpoint",
    "Set2SetObjective",
    "CKTMHA",
    "DESCRIBE_PROMPT",
    "MINIGPT4_TEMPLATE",
    "PUREMM_TEMPLATE",
    "AugmentConfig",
    "BaselineConfig",
    "CLIPCandidateSystem2",
    "ClassBalancedReservoir",
    "DataConfig",
    "EMSchedule",
    "ExperimentConfig",
    "FrozenViTEncoder",
    "HFVisionLanguageSystem2",
    "ICLLearner",
    "InteractionInfo",
    "InteractionStats",
    "InteractiveClassifier",
    "Learner",
    "LossConfig",
    "MLLMSystem2",
    "ODIConfig",
    "OracleSystem2",
    "ReplayHeadLearner",
    "ScriptedSystem2",
    "StreamData",
    "StreamResult",
    "System1",
    "System1Config",
    "System2",
    "System2Config",
    "TrainConfig",
    "TwoTurnSystem2",
    "VMFOutlierDetector",
    "VMFValueMemory",
    "ViTEncoder",
    "ViewAugment",
    "build_learner",
    "build_stream",
    "build_system1",
    "build_system2",
    "build_vit",
    "cl_vmf_loss",
    "evaluate",
    "format_candidates",
    "format_prompt",
    "parse_answer",
    "pretrain_encoder",
    "query_embedding",
    "random_hflip",
    "run_experiment",
    "run_stream",
    "system2_zero_shot",
    "tiny_vit_config",
    "vmf_margin_regularizer",
    "vmf_set2set_loss",
]
