"""The optional CUDA kernels are never imported eagerly: ``import smr_ssm`` works on a CPU-only machine
without mamba-ssm (the kernels and layers themselves are tested in shared/tests)."""

import subprocess
import sys

import pytest
import torch

from papers_shared.ssm.ops import selective_scan


@pytest.mark.slow
def test_importing_smr_ssm_in_a_fresh_interpreter_never_imports_mamba_ssm():
    # a fresh interpreter for the light modules (transformers is slow to import without bytecode caches)
    code = (
        "import sys, smr_ssm, smr_ssm.layers, smr_ssm.blocks, smr_ssm.nss, smr_ssm.trainer; "
        "assert 'mamba_ssm' not in sys.modules and 'selective_scan_cuda' not in sys.modules; "
        "assert 'transformers' not in sys.modules, 'import smr_ssm pulled in transformers'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_and_cpu_selective_scan_never_import_mamba_ssm():
    # in this process, after the transformers models and a CPU selective scan have run
    import smr_ssm.models  # noqa: F401

    u = torch.randn(1, 2, 5)
    selective_scan(u, u.abs(), -torch.ones(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5))
    assert "mamba_ssm" not in sys.modules
