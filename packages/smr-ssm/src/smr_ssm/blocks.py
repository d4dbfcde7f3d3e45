"""Residual block around an SSM mixer (layout of state-spaces/s4 @2ed46fc ``models/s4/s4d.py:S4D``):
``x = x + Dropout(Out(Mixer(Norm(x))))`` plus an
optional feed-forward sub-block. ``Out`` is S4's output layer (``GELU -> Linear(d, 2d) -> GLU``) for the
hosts that have no output projection of their own (S4D, S4, S5, Mega-EMA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from papers_shared.ssm.modules import reverse_timesteps
from smr_ssm.layers import build_layer

__all__ = [
    "DEFAULT_STATE",
    "MIXER_OUTPUT_DEFAULTS",
    "Bidirectional",
    "BlockState",
    "SSMBlock",
    "build_blocks",
    "host_kwargs",
    "make_norm",
]

#: ``mixer_output="auto"`` per layer type.
MIXER_OUTPUT_DEFAULTS = {
    "s4d": "gelu_glu",
    "s4": "gelu_glu",
    "s5": "gelu_glu",
    "mega_ema": "gelu_glu",
    "mamba": "none",
    "mega": "none",
    "spade": "none",
}


#: ``d_state=None`` per layer type (64 for S4/S4D/S5 as state-spaces/s4 @2ed46fc ``models/s4/s4d.py:S4D``;
#: 16 for Mamba as state-spaces/mamba @52f57d6 ``mamba_ssm/modules/mamba_simple.py:Mamba``; Mega's EMA 16, ours).
DEFAULT_STATE = {"s4d": 64, "s4": 64, "s5": 64, "mamba": 16, "mega": 16, "mega_ema": 16, "spade": 64}


def host_kwargs(
    layer_type: str,
    d_state: int | None = None,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    smr_position: str = "pre_proj",
    d_conv: int = 4,
    expand: int = 2,
    dt_rank: int | str = "auto",
    scan_backend: str = "auto",
    s5_blocks: int = 1,
    mega_chunk: int | None = None,
    mega_attention: bool = True,
    spade_window: int = 128,
    n_heads: int = 4,
) -> dict[str, Any]:
    """The constructor options of host ``layer_type`` from the flat model settings."""
    if layer_type not in DEFAULT_STATE:
        raise ValueError(f"unknown layer_type {layer_type!r}; valid: {sorted(DEFAULT_STATE)}")
    n = d_state or DEFAULT_STATE[layer_type]
    if layer_type in ("s4d", "s4"):
        return {"d_state": n, "dt_min": dt_min, "dt_max": dt_max}
    if layer_type == "s5":
        return {"d_state": n, "blocks": s5_blocks, "dt_min": dt_min, "dt_max": dt_max}
    if layer_type == "mamba":
        return {
            "d_state": n,
            "d_conv": d_conv,
            "expand": expand,
            "dt_rank": dt_rank,
            "dt_min": dt_min,
            "dt_max": dt_max,
            "smr_position": smr_position,
            "scan_backend": scan_backend,
        }
    if layer_type == "mega":
        return {"ndim": n, "chunk_size": mega_chunk, "attention": mega_attention}
    if layer_type == "mega_ema":
        return {"ndim": n}
    return {"d_state": n, "n_heads": n_heads, "window": spade_window, "dt_min": dt_min, "dt_max": dt_max}


def build_blocks(
    n_layer: int, d_model: int, layer_type: str, layer_kwargs: dict | None = None, **block_kwargs
) -> nn.ModuleList:
    """``n_layer`` identical :class:`SSMBlock` (``block_kwargs``: smr, bidirectional, norm, ...)."""
    return nn.ModuleList(SSMBlock(d_model, layer_type, layer_kwargs, **block_kwargs) for _ in range(n_layer))


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'layernorm', 'rmsnorm' or 'none', got {kind!r}")


class Bidirectional(nn.Module):
    """Two causal mixers, one on the reversed sequence (with reversed timesteps), outputs summed."""

    def __init__(self, forward_layer: nn.Module, backward_layer: nn.Module) -> None:
        super().__init__()
        self.fwd, self.bwd = forward_layer, backward_layer

    @property
    def smr(self):
        return self.fwd.smr

    def forward(self, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        return self.fwd(u, timesteps) + self.bwd(u.flip(1), reverse_timesteps(timesteps)).flip(1)


@dataclass
class BlockState:
    mixer: Any


class SSMBlock(nn.Module):
    """One residual SSM block.

    Args:
        d_model: width.
        layer_type: a key of :data:`smr_ssm.layers.LAYER_TYPES`.
        layer_kwargs: the host's options (``d_state``, ``dt_min``, ...).
        smr: SMR setting for the host (``None`` = baseline).
        bidirectional: non-causal block (LRA); Mamba gets two mixers (:class:`Bidirectional`).
        norm: ``"layernorm"``, ``"rmsnorm"`` or ``"none"``; prenorm: normalise before the mixer (else after
            the residual sum).
        mixer_output: ``"auto"``, ``"gelu_glu"`` or ``"none"``.
        ffn: ``"none"``, ``"mlp"`` (GELU) or ``"glu"`` feed-forward sub-block with ``ffn_expand``.
        dropout: after the mixer output and the FFN.
    """

    def __init__(
        self,
        d_model: int,
        layer_type: str = "s4d",
        layer_kwargs: dict | None = None,
        smr=None,
        bidirectional: bool = False,
        norm: str = "layernorm",
        prenorm: bool = True,
        mixer_output: str = "auto",
        ffn: str = "none",
        ffn_expand: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        kw = dict(layer_kwargs or {})
        if layer_type == "mamba" and bidirectional:
            self.mixer = Bidirectional(
                build_layer("mamba", d_model, smr=smr, **kw), build_layer("mamba", d_model, smr=smr, **kw)
            )
        else:
            self.mixer = build_layer(layer_type, d_model, smr=smr, bidirectional=bidirectional, **kw)
        out = MIXER_OUTPUT_DEFAULTS[layer_type] if mixer_output == "auto" else mixer_output
        if out == "gelu_glu":
            self.out = nn.Sequential(nn.GELU(), nn.Linear(d_model, 2 * d_model), nn.GLU(dim=-1))
        elif out == "none":
            self.out = nn.Identity()
        else:
            raise ValueError(f"mixer_output must be 'auto', 'gelu_glu' or 'none', got {mixer_output!r}")
        self.norm = make_norm(norm, d_model)
        self.prenorm = prenorm
        self.drop = nn.Dropout(dropout)
        if ffn == "none":
            self.ffn = None
        elif ffn in ("mlp", "glu"):
            hidden = ffn_expand * d_model
            act = (
                [nn.Linear(d_model, hidden), nn.GELU()]
                if ffn == "mlp"
                else [nn.Linear(d_model, 2 * hidden), nn.GLU(dim=-1)]
            )
            self.ffn = nn.Sequential(*act, nn.Linear(hidden, d_model))
            self.ffn_norm = make_norm(norm, d_model)
        else:
            raise ValueError(f"ffn must be 'none', 'mlp' or 'glu', got {ffn!r}")
        self.layer_type, self.bidirectional = layer_type, bidirectional

    @property
    def smr(self):
        return getattr(self.mixer, "smr", None)

    def _mix(self, h):
        return self.drop(self.out(h))

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x``: ``(B, L, d)``; ``mask``: ``(B, L)`` valid positions (padded ones are zeroed after the block)."""
        h = self.mixer(self.norm(x) if self.prenorm else x, timesteps)
        x = x + self._mix(h)
        if not self.prenorm:
            x = self.norm(x)
        if self.ffn is not None:
            x = x + self.drop(self.ffn(self.ffn_norm(x) if self.prenorm else x))
            if not self.prenorm:
                x = self.ffn_norm(x)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return x

    def allocate_state(self, batch_size: int, device=None, dtype=torch.float32) -> BlockState:
        if self.bidirectional:
            raise RuntimeError("a bidirectional block has no step-by-step (decoding) mode")
        return BlockState(self.mixer.allocate_state(batch_size, device, dtype))

    def step(self, x_t: torch.Tensor, state: BlockState | None = None, timestep: torch.Tensor | None = None):
        """One position ``x_t`` ``(B, d)``; equals :meth:`forward` position by position (tested)."""
        if state is None:
            state = self.allocate_state(x_t.shape[0], x_t.device, x_t.dtype)
        h, state.mixer = self.mixer.step(self.norm(x_t) if self.prenorm else x_t, state.mixer, timestep)
        x_t = x_t + self._mix(h)
        if not self.prenorm:
            x_t = self.norm(x_t)
        if self.ffn is not None:
            x_t = x_t + self.drop(self.ffn(self.ffn_norm(x_t) if self.prenorm else x_t))
            if not self.prenorm:
                x_t = self.ffn_norm(x_t)
        return x_t, state
