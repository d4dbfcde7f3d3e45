"""The baselines, each run by the same runner as SR-CIS (:func:`sr_cis.experiment.run_method`).

* :class:`SeqLoRA` - one LoRA + one growing head fine-tuned sequentially (lower bound).
* :class:`SimpleCIL` - frozen ViT + class means (cosine), no training.
* :class:`MLLMZeroShot` - the large model alone over every seen class name.
* :func:`variant_config` - SR-CIS ablations (:data:`SR_CIS_VARIANTS`).
* :func:`import_results_table` - numbers of the PTM-CIL baselines run elsewhere (L2P, DualPrompt,
  CODA-Prompt, InfLoRA).
"""

from sr_cis.baselines.external import EXTERNAL_BASELINES, import_results_table
from sr_cis.baselines.mllm_zero_shot import MLLMZeroShot
from sr_cis.baselines.seq_lora import SeqLoRA
from sr_cis.baselines.simple_cil import SimpleCIL
from sr_cis.baselines.variants import SR_CIS_VARIANTS, variant_config

__all__ = [
    "EXTERNAL_BASELINES",
    "MLLMZeroShot",
    "SR_CIS_VARIANTS",
    "SeqLoRA",
    "SimpleCIL",
    "import_results_table",
    "variant_config",
]
