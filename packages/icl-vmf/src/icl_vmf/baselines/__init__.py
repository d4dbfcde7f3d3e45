"""The baselines ICL is compared with, on the same stream runner, buffer and online protocol.

* :mod:`~icl_vmf.baselines.replay_head`: frozen ViT + linear head without replay (``linear``), with
  replay (``er``), DER++ (``derpp``) and the official ViT fine-tuning + replay reference
  (``vit_finetune_er``);
* :mod:`~icl_vmf.baselines.zero_shot`: System2 alone over all class names (official ``utils/gpt4ref.py``).
"""

from icl_vmf.baselines.replay_head import BASELINES, HeadObjective, ReplayHeadLearner
from icl_vmf.baselines.zero_shot import system2_zero_shot

__all__ = ["BASELINES", "HeadObjective", "ReplayHeadLearner", "system2_zero_shot"]
