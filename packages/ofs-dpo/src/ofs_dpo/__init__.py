"""OFS-DPO / COFS-DPO: Online Fast-Slow chasing DPO and its cross-domain extension (arXiv 2406.05534), on trl.

Public API:
    - :class:`OFSDPOConfig` (``trl.DPOConfig`` + the OFS-DPO fields)
    - :class:`OFSDPOTrainer` (``trl.DPOTrainer`` with a fast and a slow LoRA module chasing each other)
    - :class:`COFSDPO` / :class:`ContinualRunner` (cross-domain combination of fast modules and the baselines)
    - :func:`combine_lora_adapters` (parameter-space or exact weight-delta linear combination of LoRA adapters)
    - :mod:`ofs_dpo.losses` (pure tensor functions), :mod:`ofs_dpo.evaluation`, :mod:`ofs_dpo.data`
"""

from ofs_dpo.adapters import combine_lora_adapters, combine_lora_state_dicts
from ofs_dpo.cofs import COFSDPO, ContinualRunner, GradientWeightProbe, dpo_config_from
from ofs_dpo.config import OFSDPOConfig
from ofs_dpo.evaluation import continual_metrics, implicit_reward_accuracy, pair_margins
from ofs_dpo.losses import chase_loss, dpo_loss, dpo_margins, ofs_objectives, sequence_logps
from ofs_dpo.trainer import ChasingCallback, ChasingState, OFSDPOTrainer

__all__ = [
    "COFSDPO",
    "ChasingCallback",
    "ChasingState",
    "ContinualRunner",
    "GradientWeightProbe",
    "OFSDPOConfig",
    "OFSDPOTrainer",
    "chase_loss",
    "combine_lora_adapters",
    "combine_lora_state_dicts",
    "continual_metrics",
    "dpo_config_from",
    "dpo_loss",
    "dpo_margins",
    "implicit_reward_accuracy",
    "ofs_objectives",
    "pair_margins",
    "sequence_logps",
]

__version__ = "0.1.0"
