"""Spec §8 tests 6, 7 (selective scan part), 8 (scan modes) and 11 (optional CUDA)."""

import subprocess
import sys

import pytest
import torch

from smr_ssm.ops import (
    causal_fft_conv,
    direct_causal_conv,
    has_mamba_cuda,
    linear_scan,
    selective_scan,
    selective_scan_ref,
)


@pytest.mark.parametrize("L,Lk", [(64, 64), (50, 17), (7, 30)])
def test_fft_conv_equals_direct(L, Lk, f64):
    u = torch.randn(3, 4, L)
    k = torch.randn(4, Lk)
    D = torch.randn(4)
    y = causal_fft_conv(u, k, D)
    ref = direct_causal_conv(u, k) + u * D[:, None]
    assert (y - ref).abs().max() < 1e-10


@pytest.mark.parametrize("mode", ["assoc", "chunked"])
@pytest.mark.parametrize("L", [1, 2, 31, 64])
def test_linear_scan_modes_equal_loop_complex(mode, L):
    g = torch.Generator().manual_seed(L)
    a = torch.complex(
        torch.rand(2, L, 5, generator=g, dtype=torch.float64),
        torch.randn(2, L, 5, generator=g, dtype=torch.float64),
    )
    a = a / a.abs() * torch.rand(2, L, 5, generator=g, dtype=torch.float64)
    b = torch.randn(2, L, 5, generator=g, dtype=torch.complex128)
    h0 = torch.randn(2, 5, generator=g, dtype=torch.complex128)
    ref = linear_scan(a, b, h0, mode="loop")
    assert (linear_scan(a, b, h0, mode=mode) - ref).abs().max() < 1e-12
    assert (linear_scan(a[:1, :1], b, mode=mode) - linear_scan(a[:1, :1], b, mode="loop")).abs().max() < 1e-12


def test_linear_scan_gradients_match(f64):
    a = (torch.rand(1, 20, 3) * 0.9).requires_grad_()
    b = torch.randn(1, 20, 3, requires_grad=True)
    grads = []
    for mode in ("loop", "assoc", "chunked"):
        ga, gb = torch.autograd.grad(linear_scan(a, b, mode=mode).pow(2).sum(), (a, b))
        grads.append((ga, gb))
    for ga, gb in grads[1:]:
        assert torch.allclose(ga, grads[0][0]) and torch.allclose(gb, grads[0][1])


def test_linear_scan_errors():
    with pytest.raises(ValueError, match="scan mode"):
        linear_scan(torch.ones(1, 3, 2), torch.ones(1, 3, 2), mode="fft")
    with pytest.raises(ValueError, match="broadcast"):
        linear_scan(torch.ones(1, 3, 4), torch.ones(1, 3, 2))


def naive_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Per-step loop over (batch, channel), written from the S6 recurrence (spec §3.1)."""
    b, d, l = u.shape
    y = torch.zeros(b, d, l, dtype=torch.float64)
    for bi in range(b):
        for di in range(d):
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            for s in range(l):
                dt = delta[bi, di, s] + (delta_bias[di] if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = torch.nn.functional.softplus(dt)
                h = torch.exp(dt * A[di]) * h + dt * B[bi, :, s] * u[bi, di, s]
                out = (C[bi, :, s] * h).sum() + (D[di] * u[bi, di, s] if D is not None else 0.0)
                if z is not None:
                    out = out * torch.nn.functional.silu(z[bi, di, s])
                y[bi, di, s] = out
    return y


@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
def test_selective_scan_ref_equals_naive_loop(with_z, with_bias, softplus, f64):
    b, d, l, n = 2, 3, 9, 4
    u, delta = torch.randn(b, d, l), torch.rand(b, d, l)
    A = -torch.rand(d, n) - 0.2
    B, C, D = torch.randn(b, n, l), torch.randn(b, n, l), torch.randn(d)
    z = torch.randn(b, d, l) if with_z else None
    bias = torch.rand(d) * 0.1 if with_bias else None
    ref = naive_selective_scan(u, delta, A, B, C, D, z, bias, softplus)
    assert (selective_scan_ref(u, delta, A, B, C, D, z, bias, softplus) - ref).abs().max() < 1e-12
    assert (
        selective_scan(u, delta, A, B, C, D, z, bias, softplus, backend="torch") - ref
    ).abs().max() < 1e-12


def test_cuda_backend_on_cpu_raises_clearly():
    assert has_mamba_cuda() in (True, False)
    if not torch.cuda.is_available():
        assert has_mamba_cuda() is False
    u = torch.randn(1, 2, 5)
    with pytest.raises(RuntimeError, match="CUDA"):
        selective_scan(u, u, -torch.ones(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5), backend="cuda")


@pytest.mark.slow
def test_importing_smr_ssm_in_a_fresh_interpreter_never_imports_mamba_ssm():
    # a fresh interpreter for the light modules (transformers is slow to import without bytecode caches)
    code = (
        "import sys, smr_ssm, smr_ssm.ops, smr_ssm.layers, smr_ssm.blocks, smr_ssm.nss, smr_ssm.trainer; "
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


@pytest.mark.gpu
@pytest.mark.skipif(not has_mamba_cuda(), reason="needs CUDA and mamba-ssm's selective_scan_cuda extension")
def test_cuda_kernel_matches_reference_forward_backward():  # pragma: no cover - GPU only
    b, d, l, n = 2, 16, 256, 16
    dev = "cuda"
    tensors = [
        torch.randn(b, d, l),
        torch.rand(b, d, l),
        -torch.rand(d, n) - 0.1,
        torch.randn(b, n, l),
        torch.randn(b, n, l),
        torch.randn(d),
        torch.randn(b, d, l),
        torch.rand(d) * 0.1,
    ]
    xs = [t.to(dev).requires_grad_() for t in tensors]
    ys = [t.to(dev).requires_grad_() for t in tensors]
    y1 = selective_scan(*xs, True, backend="cuda")
    y2 = selective_scan_ref(*ys, True)
    assert torch.allclose(y1, y2, rtol=1e-3, atol=1e-3)
    w = torch.randn_like(y1)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    for p, q in zip(xs, ys):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-2)
