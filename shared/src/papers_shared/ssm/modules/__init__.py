"""SSM layers built on :mod:`papers_shared.ssm.ops` (mamba-ssm's split: ``ops`` kernels, ``modules`` layers).

* :class:`S4D` - diagonal S4 (complex S4D-Lin or real S4D-Real), convolution and recurrent modes;
* :class:`S5` - MIMO diagonal SSM (complex HiPPO-N or real), per-step timesteps, scan or convolution;
* :class:`Mamba` - the Mamba (S6) block on the selective scan;
* :class:`LTISSM` / :class:`ModulatedSSM` - the bases: any time-invariant SSM defined by a kernel and a
  recurrence gets convolution/recurrent modes, timesteps, bidirectionality and the *input-modulation
  hook* (a module that rewrites the input of the state update, e.g. a learnt per-position step factor);
* :mod:`~papers_shared.ssm.modules.functional` - causal FFT convolution, the Vandermonde kernel, linear
  scans; :mod:`~papers_shared.ssm.modules.hippo` - HiPPO matrices; :mod:`~papers_shared.ssm.modules.checks`
  - input validation (:func:`set_validation` turns the NaN/inf checks off).

Every layer takes ``(B, L, H)`` inputs and optional relative ``timesteps`` ``(B, L)``, and decodes step by
step with ``allocate_state`` / ``step``. Method-specific additions (such as a package's own input
modulation) stay in the package and reach the layers through the hook.
"""

from papers_shared.ssm.modules.base import (
    LTISSM,
    OPTIM_GROUPS,
    InputModulation,
    ModulatedSSM,
    complex_dtype,
    constant_rate,
    default_complex,
    prepare_input,
    real_param,
    reverse_timesteps,
    tag,
)
from papers_shared.ssm.modules.checks import (
    check_finite,
    check_sequence,
    check_timesteps,
    set_validation,
    validation,
    validation_enabled,
)
from papers_shared.ssm.modules.functional import (
    SCAN_MODES,
    causal_fft_conv,
    direct_causal_conv,
    fft_size,
    linear_scan,
    vandermonde_kernel,
)
from papers_shared.ssm.modules.hippo import hippo_legs, hippo_normal_eig
from papers_shared.ssm.modules.mamba import BACKENDS, Mamba, MambaCache
from papers_shared.ssm.modules.s4d import S4D, S4DState
from papers_shared.ssm.modules.s5 import S5, S5State

__all__ = [
    "BACKENDS",
    "LTISSM",
    "OPTIM_GROUPS",
    "S4D",
    "S5",
    "SCAN_MODES",
    "InputModulation",
    "Mamba",
    "MambaCache",
    "ModulatedSSM",
    "S4DState",
    "S5State",
    "causal_fft_conv",
    "check_finite",
    "check_sequence",
    "check_timesteps",
    "complex_dtype",
    "constant_rate",
    "default_complex",
    "direct_causal_conv",
    "fft_size",
    "hippo_legs",
    "hippo_normal_eig",
    "linear_scan",
    "prepare_input",
    "real_param",
    "reverse_timesteps",
    "set_validation",
    "tag",
    "validation",
    "validation_enabled",
    "vandermonde_kernel",
]
