"""ESMA: Easy Sample Matching Attack (Gao et al., NeurIPS 2023) -- a generative targeted transfer attack.

One conditional UNet generator ``G(x, k)`` serves all target classes; it is trained so that the source
model's logits on ``clip(Pi_eps(S(G(x, k)); x))`` match the mean logits of a few *easy* (low-loss,
low-gradient) training samples of the target class. See ``README.md`` and ``docs/methods/esma.md``.
"""

from .analysis import anchor_ablation, consistency_vs_easiness
from .attack import EasySampleMatchingLoss, EsmaAttack, InferenceGenerator
from .baselines import TTPAttack, TTPGenerator, TTPTrainer, load_ttp_checkpoint, save_ttp_generator, ttp_loss
from .config import (
    EsIterativeConfig,
    EsmaExperimentConfig,
    EvalConfig,
    GeneratorConfig,
    PretrainConfig,
    QuickConfig,
    ScreeningConfig,
    TrainConfig,
    TTPConfig,
)
from .generator import (
    GCT,
    EsmaGenerator,
    LinearAttention,
    ResBlock,
    TargetEmbedding,
    load_generator,
    save_generator,
)
from .matching import esma_matching_loss
from .pretrain import stage1_loss, structure_loss
from .screening import (
    EasySampleBank,
    class_mean_logits,
    easy_sample_thresholds,
    per_sample_loss_gradnorm,
    screen_easy_samples,
)
from .trainer import EsmaTrainer, pretrain_target_embeddings

__version__ = "0.1.0"

__all__ = [
    "GCT",
    "EasySampleBank",
    "EasySampleMatchingLoss",
    "EsIterativeConfig",
    "EsmaAttack",
    "EsmaExperimentConfig",
    "EsmaGenerator",
    "EsmaTrainer",
    "EvalConfig",
    "GeneratorConfig",
    "InferenceGenerator",
    "LinearAttention",
    "PretrainConfig",
    "QuickConfig",
    "ResBlock",
    "ScreeningConfig",
    "TTPAttack",
    "TTPConfig",
    "TTPGenerator",
    "TTPTrainer",
    "TargetEmbedding",
    "TrainConfig",
    "anchor_ablation",
    "class_mean_logits",
    "consistency_vs_easiness",
    "easy_sample_thresholds",
    "esma_matching_loss",
    "load_generator",
    "load_ttp_checkpoint",
    "per_sample_loss_gradnorm",
    "pretrain_target_embeddings",
    "save_generator",
    "save_ttp_generator",
    "screen_easy_samples",
    "stage1_loss",
    "structure_loss",
    "ttp_loss",
]
