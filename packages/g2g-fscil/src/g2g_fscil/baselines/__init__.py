"""Baselines sharing the G2G trainer (spec §4): V2V/C-FSCIL (``interaction="v2v"`` with
:func:`g2g_fscil.trainer.method_config`), NCM (decoupled cosine) and TEEN (training-free calibration)."""

from g2g_fscil.baselines.ncm import NCMClassifier, teen_calibrate
from g2g_fscil.baselines.v2v import v2v_config

__all__ = ["NCMClassifier", "teen_calibrate", "v2v_config"]
