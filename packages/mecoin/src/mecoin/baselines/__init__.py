"""Baselines of spec §4 (one method protocol, one session runner): Finetune, Joint, EWC, LwF, ER-GNN,
Frozen-NCM and TEEN."""

from mecoin.baselines.prototype import PrototypeBaseline, teen_calibrate
from mecoin.baselines.supervised import SupervisedBaseline

__all__ = ["PrototypeBaseline", "SupervisedBaseline", "teen_calibrate"]
