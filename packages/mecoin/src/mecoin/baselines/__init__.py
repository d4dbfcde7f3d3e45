"""Baselines on the same session runner and evaluator as Mecoin: Finetune (with and without
best-validation selection), Joint, EWC, LwF, ER-GNN, Frozen-NCM, TEEN, and the linear-probe bound."""

from mecoin.baselines.probe import ProbeBaseline, fit_linear_probe
from mecoin.baselines.prototype import PrototypeBaseline, teen_calibrate
from mecoin.baselines.supervised import SupervisedBaseline

__all__ = ["ProbeBaseline", "PrototypeBaseline", "SupervisedBaseline", "fit_linear_probe", "teen_calibrate"]
