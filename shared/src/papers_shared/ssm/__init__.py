"""State-space-model building blocks shared by smr-ssm and fsg-bnn.

``ops`` holds the kernels (the selective scan: chunked pure PyTorch on CPU, mamba-ssm's CUDA kernel when
importable and on CUDA) with their references; ``modules`` holds the layers built on them (S4D, S5, the
Mamba block), each with an input-modulation hook through which a package adds its own method.
"""

from papers_shared.ssm.modules import LTISSM, S4D, S5, Mamba, ModulatedSSM
from papers_shared.ssm.ops import has_mamba_cuda, selective_scan, selective_scan_chunked, selective_scan_ref

__all__ = [
    "LTISSM",
    "S4D",
    "S5",
    "Mamba",
    "ModulatedSSM",
    "has_mamba_cuda",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
