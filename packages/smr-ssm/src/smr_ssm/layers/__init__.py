"""SSM hosts with SMR, and a registry to build them by name.

S4D, S5 and the Mamba block are the shared layers of :mod:`papers_shared.ssm.modules` with SMR installed
through their input-modulation hook (:mod:`smr_ssm.layers.hosts`); S4 (DPLR), Mega and SPADE-lite are this
package's own hosts on the same base. With ``smr=None`` every host is the plain SSM: the baselines.
"""

from __future__ import annotations

from smr_ssm.layers.attention import KVCache, chunked_attention, local_attention
from smr_ssm.layers.hosts import S4D, S5, MambaMixer, SMRHost, install_smr
from smr_ssm.layers.mega import MegaEMA, MegaLayer
from smr_ssm.layers.s4 import S4
from smr_ssm.layers.spade import SPADELite

__all__ = [
    "LAYER_TYPES",
    "KVCache",
    "MambaMixer",
    "MegaEMA",
    "MegaLayer",
    "S4",
    "S4D",
    "S5",
    "SMRHost",
    "SPADELite",
    "build_layer",
    "chunked_attention",
    "install_smr",
    "local_attention",
]

#: Layer types of :class:`~smr_ssm.models.SSMConfig` (``layer_type``) and their classes.
LAYER_TYPES = {
    "s4d": S4D,
    "s4": S4,
    "s5": S5,
    "mamba": MambaMixer,
    "mega": MegaLayer,
    "mega_ema": MegaEMA,
    "spade": SPADELite,
}


def build_layer(layer_type: str, d_model: int, smr=None, bidirectional: bool = False, **kwargs):
    """Instantiate a host by name; ``kwargs`` the host's own options (``d_state``, ``dt_min`` ...).

    Mamba is causal by construction; ``bidirectional=True`` for it is rejected here (use
    :class:`~smr_ssm.blocks.Bidirectional` around two mixers).
    """
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"unknown layer_type {layer_type!r}; valid: {sorted(LAYER_TYPES)}")
    cls = LAYER_TYPES[layer_type]
    if layer_type == "mamba":
        if bidirectional:
            raise ValueError("MambaMixer is causal; wrap two mixers in blocks.Bidirectional instead")
        return cls(d_model, smr=smr, **kwargs)
    return cls(d_model, smr=smr, bidirectional=bidirectional, **kwargs)
