"""S2I-MI-FGSM as the IBTA official code runs it (the baseline X of IBTA-S2I).

In ``used_attacks.py:IBTA_S2I_MIFGSM.forward`` (Biqing-Qi/Enhancing-Adversarial-Transferability-via-
Information-Bottleneck-Constraints, commit 6866b7a) each of the ``N`` copies transforms the *clean*
image and adds the perturbation afterwards, ``IDCT(DCT(x + xi_n) * M_n) + delta``, with no clamp;
SSA's paper (Long et al., ECCV 2022, Algorithm 1) transforms the adversarial image ``x + delta``
instead. ``ssa_mode="ibta_code"`` (default here) is the former, ``"ssa_paper"`` the shared
:class:`papers_shared.attacks.SSA`.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from papers_shared.attacks import SSA

__all__ = ["SSA_MODES", "S2IMIFGSM"]

SSA_MODES = ("ibta_code", "ssa_paper")


class S2IMIFGSM(SSA):
    """S2I-MI-FGSM with the copy construction of the IBTA official code (``ssa_mode="ibta_code"``).

    ``ssa_mode="ibta_code"``: copy ``n`` is ``IDCT(DCT(x + xi_n) * M_n) + delta`` (the clean image is
    transformed, ``delta`` added after, no clamp on ``x + delta``). ``ssa_mode="ssa_paper"``: the shared
    SSA transform of ``x + delta``. Every other argument is :class:`papers_shared.attacks.SSA`'s.
    """

    name = "s2i_ibta_code"
    reference = "Long et al., ECCV 2022, as run by the IBTA official code"

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        ssa_mode: Literal["ibta_code", "ssa_paper"] = "ibta_code",
        **kwargs: Any,
    ) -> None:
        if ssa_mode not in SSA_MODES:
            raise ValueError(f"ssa_mode must be one of {list(SSA_MODES)}, got {ssa_mode!r}")
        super().__init__(model, *args, **kwargs)
        self.ssa_mode = ssa_mode

    def perturb(self, x: Tensor, delta: Tensor) -> Tensor:
        if self.ssa_mode == "ibta_code":
            return x + delta  # no clamp: the code adds delta after the spectral transform
        return super().perturb(x, delta)

    def simulate(self, xs: Tensor, copies: int) -> Tensor:
        if self.ssa_mode != "ibta_code":
            return super().simulate(xs, copies)
        clean = self.state.x if self.state is not None else xs.detach()
        clean = clean.repeat(copies, 1, 1, 1) if copies > 1 else clean
        return self.spectrum(clean) + (xs - clean)
