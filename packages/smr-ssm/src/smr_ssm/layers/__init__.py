"""SSM hosts with SMR at the insertion points of spec §3.5, and a registry to build them by name."""

from __future__ import annotations

from smr_ssm.layers.attention import KVCache, chunked_attention, local_attention
from smr_ssm.layers.hippo import hippo_legs, hippo_normal_eig
from smr_ssm.layers.mamba import MambaCache, MambaMixer
from smr_ssm.layers.mega import MegaEMA, MegaLayer
from smr_ssm.layers.s4 import S4
from smr_ssm.layers.s4d import S4D, vandermonde_kernel
from smr_ssm.layers.s5 import S5
from smr_ssm.layers.spade import SPADELite

__all__ = [
    "LAYER_TYPES",
    "KVCache",
    "MambaCache",
    "MambaMixer",
    "MegaEMA",
    "MegaLayer",
    "S4",
    "S4D",
    "S5",
    "SPADELite",
    "build_layer",
    "chunked_attention",
    "hippo_legs",
    "hippo_normal_eig",
    "local_attention",
    "vandermonde_kernel",
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
