"""Baselines sharing the G2G pipeline: V2V / C-FSCIL (``interaction="v2v"``, modes 1-3, prototype
nudging), NCM (decoupled cosine) and TEEN (training-free prototype calibration)."""

from g2g_fscil.baselines.ncm import NCMClassifier, teen_calibrate
from g2g_fscil.baselines.v2v import method_config, nudge_prototypes, nudging_loss, v2v_config

__all__ = [
    "NCMClassifier",
    "method_config",
    "nudge_prototypes",
    "nudging_loss",
    "teen_calibrate",
    "v2v_config",
]
