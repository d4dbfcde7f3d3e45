"""Compute kernels shared by several packages (pure PyTorch, optional CUDA dispatch)."""

from papers_shared.kernels.selective_scan import (
    has_mamba_cuda,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = ["has_mamba_cuda", "selective_scan", "selective_scan_chunked", "selective_scan_ref"]
