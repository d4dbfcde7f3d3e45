"""State Memory Replay (SMR): a learnable causal memory over the last ``m`` inputs that rescales the input
of an SSM's state update.

Sources. The paper (Qi et al., Findings of ACL 2024, arXiv 2405.17534; only its abstract could be read)
states that adjusting the input sequence with early memories achieves Sampling Step Adaptation and that
SMR uses learnable memories over multi-step information; no official code exists. The equations below
are our reconstruction (ours), consistent with the public reviews of the paper's precursor (S4++,
OpenReview ``bdnw4qjfH9``), which describe SMR as a local convolution of the input multiplied with the
input.

For an input ``u`` of shape ``(B, L, H)`` (the sequence that enters the state update), memories
``W`` of shape ``(H, m)`` and a bias ``b`` of shape ``(H,)``::

    g_k = sum_{j=0}^{m-1} W[:, j] * u_{k-j} + b        (replay; u_{k-j} = 0 before the sequence)
    s_k = phi(g_k)                                      (gate)
    u~_k = s_k * u_k                                    (adjusted input)

The SSM then consumes ``u~`` in its state update (``x_k = A x_{k-1} + B u~_k``) and, by default, its
skip term ``D * u_k`` stays on the raw input (``skip_uses="raw"``). SMR depends only on a finite
window of inputs, never on states, so it is computed for all positions at once and keeps a
convolution-mode SSM in convolution mode (the paper's abstract: non-recursive, convolution compatible).

The ``"conv_only"`` mode is our ablation (``u~ = u + W * u + b``, no multiplicative gate, the H3/Hyena-style
short convolution the precursor's reviewers compared SMR with).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from papers_shared.ssm.modules import check_sequence

__all__ = [
    "ACTIVATIONS",
    "SMR_DEFAULTS",
    "SMR_PRESETS",
    "SMRCache",
    "SMRWrapper",
    "StateMemoryReplay",
    "build_smr",
    "resolve_smr",
]

#: Gate nonlinearities phi (ours; ``"identity"``, the default, matches the reviews' plain product).
ACTIVATIONS = ("identity", "sigmoid2", "silu", "softplus1")

#: Keyword arguments of :class:`StateMemoryReplay` and their defaults (ours).
SMR_DEFAULTS: dict[str, Any] = {
    "memory_len": 4,
    "activation": "identity",
    "init": "identity",
    "bias": True,
    "skip_uses": "raw",
    "mode": "gate",
}

#: Named SMR settings: every layer's ``smr=`` argument accepts one of these names or a dict.
#: ``"default"`` is our reconstruction (identity at init); ``"literal"`` the most literal reading of the
#: precursor's reviews (``u~ = u * (W * u)``, no offset, random init); the others are our
#: ablations.
SMR_PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(SMR_DEFAULTS),
    "literal": {**SMR_DEFAULTS, "activation": "identity", "init": "random", "bias": False},
    "no_replay": {**SMR_DEFAULTS, "memory_len": 1},
    "conv_only": {**SMR_DEFAULTS, "mode": "conv_only"},
    "sigmoid2": {**SMR_DEFAULTS, "activation": "sigmoid2"},
    "softplus1": {**SMR_DEFAULTS, "activation": "softplus1"},
    "silu": {**SMR_DEFAULTS, "activation": "silu"},
}

# phi(b0) = 1 at these offsets (the identity-init bias of each activation).
_SILU_ONE = 1.2784645427610738  # silu(x) = 1
_LOG_E_MINUS_1 = math.log(math.e - 1.0)  # softplus(x) = 1


def resolve_smr(smr: str | Mapping[str, Any] | None | bool) -> dict[str, Any] | None:
    """Normalise a layer's ``smr=`` argument to a full keyword dict (or ``None`` for no SMR).

    ``None``/``False`` -> no SMR; ``True`` or ``"default"`` -> the default preset; a preset name ->
    that preset; a dict -> its keys over the preset named by its optional ``"preset"`` key
    (``"default"`` when absent). Unknown presets or keys raise ``ValueError`` listing the valid ones.
    """
    if smr is None or smr is False:
        return None
    if smr is True:
        smr = "default"
    if isinstance(smr, str):
        if smr not in SMR_PRESETS:
            raise ValueError(f"unknown SMR preset {smr!r}; valid presets: {sorted(SMR_PRESETS)}")
        return dict(SMR_PRESETS[smr])
    if not isinstance(smr, Mapping):
        raise TypeError(f"smr must be None, a preset name or a dict; got {type(smr).__name__}")
    smr = dict(smr)
    preset = smr.pop("preset", "default")
    if preset not in SMR_PRESETS:
        raise ValueError(f"unknown SMR preset {preset!r}; valid presets: {sorted(SMR_PRESETS)}")
    unknown = sorted(set(smr) - set(SMR_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown SMR option(s) {unknown}; valid options: {sorted(SMR_DEFAULTS)} and 'preset'"
        )
    return {**SMR_PRESETS[preset], **smr}


def build_smr(d_model: int, smr: str | Mapping[str, Any] | None | bool) -> StateMemoryReplay | None:
    """A :class:`StateMemoryReplay` from a layer's ``smr=`` argument, or ``None``."""
    kwargs = resolve_smr(smr)
    return None if kwargs is None else StateMemoryReplay(d_model, **kwargs)


@dataclass
class SMRCache:
    """Streaming state of one SMR module: a ring buffer of the last ``m - 1`` raw inputs.

    ``buf`` is ``(batch, m - 1, H)``; ``pos`` is the slot the next input is written to (slot
    ``(pos - j) mod (m - 1)`` holds ``u_{t-j}``). Zeros at the start of a sequence (ours).
    """

    buf: torch.Tensor
    pos: int = 0


class _CausalReplay(torch.autograd.Function):
    """``g = b + sum_j W[:, j] * shift_j(u)`` along the time axis (the replay equation, ours) for ``u`` of shape
    ``(B, L, H)`` (``dim=1``) or ``(B, H, L)`` (``dim=2``), with a hand-written backward: ``du`` is the
    anti-causal (transposed) replay of ``dg``, ``dW[:, j]`` the lag-``j`` correlation of ``dg`` and ``u``,
    ``db`` the sum of ``dg``. ``m`` fused multiply-adds each way and no padded copies (a depthwise
    ``conv1d`` is several times slower on CPU for ``m ~ 4``)."""

    @staticmethod
    def forward(ctx, u, W, b, dim):
        m, L = W.shape[1], u.shape[dim]
        shape = (-1, 1) if dim == 2 else (-1,)  # broadcast a channel vector against u
        g = torch.addcmul(b.view(shape), u, W[:, 0].view(shape)) if b is not None else u * W[:, 0].view(shape)
        for j in range(1, min(m, L)):
            g.narrow(dim, j, L - j).addcmul_(u.narrow(dim, 0, L - j), W[:, j].view(shape))
        ctx.save_for_backward(u, W)
        ctx.dim, ctx.shape, ctx.has_bias = dim, shape, b is not None
        return g

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dg):
        u, W = ctx.saved_tensors
        dim, shape = ctx.dim, ctx.shape
        m, L = W.shape[1], u.shape[dim]
        du = dW = db = None
        if ctx.needs_input_grad[0]:
            du = dg * W[:, 0].view(shape)
            for j in range(1, min(m, L)):
                du.narrow(dim, 0, L - j).addcmul_(dg.narrow(dim, j, L - j), W[:, j].view(shape))
        if ctx.needs_input_grad[1]:
            cols = [
                torch.linalg.vecdot(dg.narrow(dim, j, L - j), u.narrow(dim, 0, L - j), dim=dim).sum(0)
                if j < L
                else W.new_zeros(W.shape[0])
                for j in range(m)
            ]
            dW = torch.stack(cols, dim=1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dg.sum((0, dim))
        return du, dW, db, None


class StateMemoryReplay(nn.Module):
    """SMR module (our reconstruction of the paper's mechanism: replay, gate, adjusted input).

    Args:
        d_model: channels ``H``.
        memory_len: memory length ``m`` (number of replayed steps, ``>= 1``); ``m = 1`` is the
            "no replay" ablation (a pointwise gate ``phi(W_0 u_k + b) u_k``).
        activation: ``phi``: ``"identity"`` (default), ``"sigmoid2"`` (``2 sigmoid(g)``),
            ``"silu"`` or ``"softplus1"`` (``softplus(g + log(e - 1))``).
        init: ``"identity"`` (``W = 0``, ``phi(b) = 1``: an exact no-op at initialisation) or
            ``"random"`` (``W ~ U(+-1/sqrt(m))``; bias as for identity).
        bias: learn ``b``.
        skip_uses: read by the host layer: its skip term ``D * u`` uses the raw input (``"raw"``) or
            the adjusted one (``"smr"``).
        mode: ``"gate"`` (SMR) or ``"conv_only"`` (``u~ = u + g``; activation must be identity).

    ``phi`` is evaluated as ``1 + (f(g) - f(g0))`` for silu and softplus1 (``g0`` the point where
    ``f = 1``) so the identity initialisation is exact in every dtype; this differs from ``f(g)`` by
    less than one ulp.
    """

    def __init__(
        self,
        d_model: int,
        memory_len: int = 4,
        activation: str = "identity",
        init: str = "identity",
        bias: bool = True,
        skip_uses: str = "raw",
        mode: str = "gate",
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if not isinstance(memory_len, int) or memory_len < 1:
            raise ValueError(f"memory_len must be an int >= 1, got {memory_len!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {list(ACTIVATIONS)}")
        if init not in ("identity", "random"):
            raise ValueError(f"init must be 'identity' or 'random', got {init!r}")
        if skip_uses not in ("raw", "smr"):
            raise ValueError(f"skip_uses must be 'raw' or 'smr', got {skip_uses!r}")
        if mode not in ("gate", "conv_only"):
            raise ValueError(f"mode must be 'gate' or 'conv_only', got {mode!r}")
        if mode == "conv_only" and activation != "identity":
            raise ValueError("mode='conv_only' adds the replayed signal; it takes activation='identity' only")
        self.d_model, self.memory_len = d_model, memory_len
        self.activation, self.init, self.skip_uses, self.mode = activation, init, skip_uses, mode
        self.weight = nn.Parameter(torch.zeros(d_model, memory_len))  # W[:, j] multiplies u_{k-j}
        self.weight._optim_group = "smr"
        if bias:
            self.bias = nn.Parameter(torch.zeros(d_model))
            self.bias._optim_group = "smr"
        else:
            self.register_parameter("bias", None)
        # phi's reference point g0 (phi(g0) = 1), kept in the parameters' dtype so that an
        # identity-initialised bias equals it exactly after any .to(dtype)
        self.register_buffer("g0", torch.tensor(self._identity_offset()), persistent=False)
        self.track_stats = False
        self.last_stats: dict[str, float] = {}
        self.reset_parameters()

    # -- parameters -------------------------------------------------------------------------------
    def _identity_offset(self) -> float:
        """The pre-activation ``g0`` with ``phi(g0) = 1`` (0 for conv_only: ``u~ = u + g``)."""
        if self.mode == "conv_only":
            return 0.0
        return {"identity": 1.0, "sigmoid2": 0.0, "silu": _SILU_ONE, "softplus1": 0.0}[self.activation]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "identity":
                self.weight.zero_()
            else:
                bound = 1.0 / math.sqrt(self.memory_len)
                self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.copy_(self.g0.expand_as(self.bias))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, memory_len={self.memory_len}, activation={self.activation!r}, "
            f"init={self.init!r}, bias={self.bias is not None}, skip_uses={self.skip_uses!r}, mode={self.mode!r}"
        )

    # -- the three equations (replay, gate, adjusted input; ours) --------------------------------
    def replay(self, u: torch.Tensor) -> torch.Tensor:
        """``g_k = sum_j W[:, j] u_{k-j} + b`` (causal depthwise convolution, zero left padding);
        ``u``: ``(B, L, H)``."""
        bias = self.bias.to(u.dtype) if self.bias is not None else None
        return _CausalReplay.apply(u, self.weight.to(u.dtype), bias, 1)

    def replay_channels_first(self, u: torch.Tensor) -> torch.Tensor:
        """:meth:`replay` for ``u`` of shape ``(B, H, L)`` (the layout of the convolution-mode hosts'
        FFT, so SMR needs no extra transpose there)."""
        bias = self.bias.to(u.dtype) if self.bias is not None else None
        return _CausalReplay.apply(u, self.weight.to(u.dtype), bias, 2)

    def _phi(self, g: torch.Tensor) -> torch.Tensor:
        act = self.activation
        if act == "identity":
            return g
        if act == "sigmoid2":
            return 2.0 * torch.sigmoid(g)
        g0 = self.g0.to(g.dtype)
        if act == "silu":
            return (F.silu(g) - F.silu(g0)) + 1.0
        c = torch.tensor(_LOG_E_MINUS_1, dtype=g.dtype, device=g.device)
        return (F.softplus(g + c) - F.softplus(g0 + c)) + 1.0

    def scale(self, u: torch.Tensor) -> torch.Tensor:
        """The per-position, per-channel factor ``s = phi(g)`` (ours: for ZOH, ``B_bar(s Delta) u ~ B_bar(Delta) (s u)``, so ``s`` emulates a step ratio)."""
        check_sequence(u, self.d_model)
        return self._phi(self.replay(u))

    def _adjust(self, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv_only":
            return u + g
        s = self._phi(g)
        if self.track_stats:
            self._record(s)
        return s * u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u~ = phi(g) * u`` (mode ``"gate"``) or ``u + g`` (``"conv_only"``); ``u``: ``(B, L, H)``."""
        check_sequence(u, self.d_model)
        return self._adjust(self.replay(u), u)

    def forward_channels_first(self, u: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for ``u`` of shape ``(B, H, L)`` (returns ``(B, H, L)``)."""
        check_sequence(u, self.d_model, transposed=True)
        return self._adjust(self.replay_channels_first(u), u)

    def _record(self, s: torch.Tensor) -> None:
        with torch.no_grad():
            sf = s.detach().float()
            self.last_stats = {
                "scale_mean": sf.mean().item(),
                "scale_std": sf.std().item() if sf.numel() > 1 else 0.0,
                "scale_neg_frac": (sf < 0).float().mean().item(),
            }

    # -- streaming (ring buffer of the last m - 1 inputs; ours) --------------------------------------
    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> SMRCache:
        """An empty ring buffer (zeros) for ``batch_size`` sequences."""
        device = device if device is not None else self.weight.device
        dtype = dtype if dtype is not None else self.weight.dtype
        return SMRCache(
            torch.zeros(batch_size, max(self.memory_len - 1, 0), self.d_model, device=device, dtype=dtype)
        )

    def step(self, u_t: torch.Tensor, cache: SMRCache | None = None) -> tuple[torch.Tensor, SMRCache]:
        """One streaming step: ``u_t`` ``(B, H)`` -> ``(u~_t, cache)``; the cache is updated in place.

        Equals position ``t`` of :meth:`forward` on the whole prefix (tested).
        """
        if u_t.ndim != 2 or u_t.shape[1] != self.d_model:
            raise ValueError(f"u_t must be (batch, {self.d_model}); got {tuple(u_t.shape)}")
        if cache is None:
            cache = self.allocate_cache(u_t.shape[0], u_t.device, u_t.dtype)
        W = self.weight.to(u_t.dtype)
        g = u_t * W[:, 0]
        if self.bias is not None:
            g = g + self.bias.to(u_t.dtype)
        m1 = self.memory_len - 1
        if m1 > 0:
            idx = torch.tensor([(cache.pos - j) % m1 for j in range(1, m1 + 1)], device=u_t.device)
            past = cache.buf.index_select(1, idx)  # (B, m-1, H): u_{t-1}, ..., u_{t-m+1}
            g = g + (past * W[:, 1:].transpose(0, 1)).sum(1)
            cache.buf[:, cache.pos] = u_t
            cache.pos = (cache.pos + 1) % m1
        if self.mode == "conv_only":
            return u_t + g, cache
        return self._phi(g) * u_t, cache


class SMRWrapper(nn.Module):
    """Apply SMR to the input of any ``(B, L, H) -> (B, L, H)`` layer (ours, generic wrapper).

    ``forward(u, *args, **kwargs) = layer(SMR(u), *args, **kwargs)``. Unlike the built-in hosts, the
    wrapped layer's own skip term then sees ``u~`` (the documented difference).
    """

    def __init__(
        self, layer: nn.Module, d_model: int, smr: str | Mapping[str, Any] | None = "default", **smr_kwargs
    ) -> None:
        super().__init__()
        kwargs = resolve_smr(smr) or dict(SMR_DEFAULTS)
        kwargs.update(smr_kwargs)
        self.smr = StateMemoryReplay(d_model, **kwargs)
        self.layer = layer

    def forward(self, u: torch.Tensor, *args, **kwargs):
        return self.layer(self.smr(u), *args, **kwargs)
