"""smr_ssm: State Memory Replay (SMR) for S4/S5/Mamba state-space models under non-uniform sampling.

Public API (layout ours): :class:`StateMemoryReplay`, :data:`SMR_PRESETS`, :class:`SMRWrapper`; the hosts
:class:`S4D`, :class:`S4`, :class:`S5`, :class:`MambaMixer`, :class:`MegaEMA`, :class:`MegaLayer`,
:class:`SPADELite`; :class:`SSMBlock`; the transformers models :class:`SSMConfig`,
:class:`SSMForCausalLM`, :class:`SSMForSequenceClassification`, :class:`SSMForSequenceRegression`
(imported lazily, so ``import smr_ssm`` does not import transformers); :mod:`smr_ssm.ops`.
``mamba_ssm`` is never imported here: the selective scan dispatches to it lazily on CUDA tensors only.
"""

from __future__ import annotations

import importlib

from papers_shared.ssm.modules import set_validation
from smr_ssm.blocks import Bidirectional, SSMBlock
from smr_ssm.layers import LAYER_TYPES, S4, S4D, S5, MambaMixer, MegaEMA, MegaLayer, SPADELite, build_layer
from smr_ssm.smr import SMR_DEFAULTS, SMR_PRESETS, SMRCache, SMRWrapper, StateMemoryReplay, resolve_smr

__version__ = "0.1.0"

_LAZY = {
    "SSMConfig": "smr_ssm.models",
    "SSMModel": "smr_ssm.models",
    "SSMForCausalLM": "smr_ssm.models",
    "SSMForSequenceClassification": "smr_ssm.models",
    "SSMForSequenceRegression": "smr_ssm.models",
    "smr_scale_stats": "smr_ssm.models",
    "smr_modules": "smr_ssm.models",
}

__all__ = [
    "LAYER_TYPES",
    "S4",
    "S4D",
    "S5",
    "SMR_DEFAULTS",
    "SMR_PRESETS",
    "Bidirectional",
    "MambaMixer",
    "MegaEMA",
    "MegaLayer",
    "SMRCache",
    "SMRWrapper",
    "SPADELite",
    "SSMBlock",
    "StateMemoryReplay",
    "build_layer",
    "resolve_smr",
    "set_validation",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'smr_ssm' has no attribute {name!r}")
