"""SMR in S4D, S5 and Mamba: the shared layers of :mod:`papers_shared.ssm.modules` with a
:class:`~smr_ssm.smr.StateMemoryReplay` installed through their input-modulation hook.

Where SMR goes in each host (Qi et al. 2024, abstract: SMR adjusts the *input* of the state update with
learnable memories; the insertion points are ours, chosen so that the convolution mode is kept):

* S4D: ``y = K * SMR(u) + D u`` - the kernel is untouched, so the layer stays an FFT convolution;
* S5: ``x_k = Lambda_bar_k x_{k-1} + B_bar_k SMR(u)_k``; true per-step ``timesteps`` are still used
  when given (SMR is complementary to them);
* Mamba: on the convolved activations, before ``x_proj`` (``smr_position="pre_proj"``: ``Delta, B, C``
  and the scanned input all see the replayed sequence) or only on the scanned input (``"scan_only"``).

The skip term ``D u`` reads the raw input unless the SMR setting says ``skip_uses="smr"``. A
bidirectional host gets a second SMR for its backward direction, which reads the reversed sequence.
``smr=None`` gives the plain layer: the baseline of every comparison.
"""

from __future__ import annotations

from typing import Any

from papers_shared.ssm.modules import S4D as _S4D
from papers_shared.ssm.modules import S5 as _S5
from papers_shared.ssm.modules import Mamba as _Mamba
from papers_shared.ssm.modules import ModulatedSSM
from smr_ssm.smr import StateMemoryReplay, build_smr

__all__ = ["S4D", "S5", "MambaMixer", "SMRHost", "install_smr"]


def install_smr(layer: ModulatedSSM, d_model: int, smr: Any) -> None:
    """Build SMR from a ``smr=`` setting (``None``, a preset name or a dict) and install it in ``layer``
    (one per direction); the SMR modules are created after the layer's own parameters."""
    fwd = build_smr(d_model, smr)
    bwd = build_smr(d_model, smr) if (fwd is not None and layer.bidirectional) else None
    layer.set_modulation(fwd, bwd, skip_modulated=fwd is not None and fwd.skip_uses == "smr")


class SMRHost:
    """``smr`` / ``smr_bwd``: the installed SMR modules (``None`` for the baseline)."""

    @property
    def smr(self) -> StateMemoryReplay | None:
        return self.modulation

    @property
    def smr_bwd(self) -> StateMemoryReplay | None:
        return self.modulation_bwd


class S4D(SMRHost, _S4D):
    """:class:`papers_shared.ssm.modules.S4D` (S4D-Lin by default) with SMR on the input of its state
    update. ``smr``: ``None``, a preset of :data:`~smr_ssm.smr.SMR_PRESETS` or a dict; other keyword
    arguments go to the shared layer (``transposed``, ``bidirectional``, ``mode``, ``scan_mode``, ``init``...)."""

    def __init__(
        self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, smr=None, **kwargs
    ):
        super().__init__(d_model, d_state, dt_min, dt_max, **kwargs)
        install_smr(self, d_model, smr)


class S5(SMRHost, _S5):
    """:class:`papers_shared.ssm.modules.S5` (HiPPO-N by default) with SMR in ``B_bar_k u~_k``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        blocks: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        smr=None,
        **kwargs,
    ):
        super().__init__(d_model, d_state, blocks, dt_min, dt_max, **kwargs)
        install_smr(self, d_model, smr)


class MambaMixer(SMRHost, _Mamba):
    """:class:`papers_shared.ssm.modules.Mamba` with SMR over its ``d_inner`` channels.

    ``smr_position``: ``"pre_proj"`` (default) or ``"scan_only"``; ``scan_backend``: the selective scan's
    backend (``"auto"``, ``"torch"``, ``"ref"``, ``"cuda"``); other keyword arguments as the shared block.
    """

    def __init__(
        self, d_model: int, smr=None, smr_position: str = "pre_proj", scan_backend: str = "auto", **kwargs
    ):
        super().__init__(d_model, backend=scan_backend, modulation_position=smr_position, **kwargs)
        install_smr(self, self.d_inner, smr)

    @property
    def smr_position(self) -> str:
        return self.modulation_position
