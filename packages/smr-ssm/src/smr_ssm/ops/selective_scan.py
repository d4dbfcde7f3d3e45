"""Selective scan (S6/Mamba), re-exported from :mod:`papers_shared.ssm.ops` (spec §7 ``ops``).

The workspace keeps one implementation: ``papers_shared.ssm.ops.selective_scan`` has mamba-ssm's
``selective_scan_fn`` signature and tensor layouts (``u, delta: (b, d, l)``; ``A: (d, n)``;
``B, C: (b, n, l)``, ``(b, g, n, l)`` or ``(d, n)``; ``D, delta_bias: (d,)``; ``z: (b, d, l)``).
``backend="auto"`` dispatches to mamba-ssm's CUDA kernel only when it imports **and** every tensor is
on CUDA; otherwise the chunked pure-PyTorch scan (custom autograd function with a hand-written
reverse-scan backward) runs. ``"torch"`` forces it, ``"ref"`` runs the sequential loop, and
``"cuda"`` raises a clear ``RuntimeError`` where the kernel cannot run. ``mamba_ssm`` is imported
lazily inside the dispatch, never when this module is imported.
"""

from __future__ import annotations

from papers_shared.ssm.ops import has_mamba_cuda, selective_scan, selective_scan_chunked, selective_scan_ref

__all__ = ["has_mamba_cuda", "selective_scan", "selective_scan_chunked", "selective_scan_ref"]
