"""The iterative attacks, by their former module name.

The engine is :mod:`.engine`; the presets are grouped by family in :mod:`.gradient`,
:mod:`.input_transform`, :mod:`.objective` and :mod:`.minmax`; names are looked up in :mod:`.registry`.
This module re-exports them so ``papers_shared.attacks.iterative.MIFGSM`` keeps working.
"""

from .engine import DEFAULT, AttackState, IterativeAttack, repeat_labels
from .gradient import IFGSM, MIFGSM, VMIFGSM
from .input_transform import DIFGSM, SINIFGSM, SSA, TIFGSM, Admix
from .minmax import RAP
from .objective import LogitAttack, PoTrip
from .registry import PRESETS, create_attack, get_attack, presets, register_preset

__all__ = [
    "DEFAULT",
    "DIFGSM",
    "IFGSM",
    "MIFGSM",
    "PRESETS",
    "RAP",
    "SINIFGSM",
    "SSA",
    "TIFGSM",
    "VMIFGSM",
    "Admix",
    "AttackState",
    "IterativeAttack",
    "LogitAttack",
    "PoTrip",
    "create_attack",
    "get_attack",
    "presets",
    "register_preset",
    "repeat_labels",
]
