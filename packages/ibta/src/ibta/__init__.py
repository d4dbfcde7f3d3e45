"""IBTA: transferable adversarial attacks with information-bottleneck constraints, and MINE.

Qi, Gao, Liu, Wu, Zhou, "Enhancing Adversarial Transferability via Information Bottleneck
Constraints", IEEE Signal Processing Letters (arXiv 2406.05531). Built on :mod:`papers_shared.attacks`.
"""

from .attacks import (
    IBTA_DIFGSM,
    IBTA_MIFGSM,
    IBTA_S2IFGSM,
    IBTA_TIFGSM,
    IBTA_LogitTI,
    IBTA_RAPLogitTI,
    IBTAAttack,
)
from .baselines import BASES, DEFAULT_STEPS, S2IMIFGSM, RAPLogitTI, base_attack, base_attack_spec
from .config import AttackConfig, ExperimentConfig, QuickConfig
from .mine import MINE, MIEstimate, StatisticsNetwork, estimate_mutual_information, gaussian_mi
from .noise import noisy_companion
from .objective import ib_divergence, ib_objective, ib_terms

__all__ = [
    "BASES",
    "DEFAULT_STEPS",
    "IBTA_DIFGSM",
    "IBTA_MIFGSM",
    "IBTA_RAPLogitTI",
    "IBTA_S2IFGSM",
    "IBTA_TIFGSM",
    "MINE",
    "AttackConfig",
    "ExperimentConfig",
    "IBTAAttack",
    "IBTA_LogitTI",
    "MIEstimate",
    "QuickConfig",
    "RAPLogitTI",
    "S2IMIFGSM",
    "StatisticsNetwork",
    "base_attack",
    "base_attack_spec",
    "estimate_mutual_information",
    "gaussian_mi",
    "ib_divergence",
    "ib_objective",
    "ib_terms",
    "noisy_companion",
]

__version__ = "0.1.0"
