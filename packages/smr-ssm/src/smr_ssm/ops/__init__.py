"""Numerical operators: FFT convolution, diagonal linear scans, and the (shared) selective scan."""

from smr_ssm.ops.fftconv import causal_fft_conv, direct_causal_conv, fft_size
from smr_ssm.ops.scan import SCAN_MODES, linear_scan
from smr_ssm.ops.selective_scan import (
    has_mamba_cuda,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "SCAN_MODES",
    "causal_fft_conv",
    "direct_causal_conv",
    "fft_size",
    "has_mamba_cuda",
    "linear_scan",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
