"""SSM compute kernels with their pure-PyTorch references (mamba-ssm's ``ops/`` split)."""

from papers_shared.ssm.ops.selective_scan import (
    BACKENDS,
    fused_available,
    has_mamba_cuda,
    selective_scan,
    selective_scan_chunked,
    selective_scan_fused,
    selective_scan_ref,
)

__all__ = [
    "BACKENDS",
    "fused_available",
    "has_mamba_cuda",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_fused",
    "selective_scan_ref",
]
