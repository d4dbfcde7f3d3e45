import importlib
import warnings

import pytest
import torch

from papers_shared.ssm.ops import (
    BACKENDS,
    _native,
    fused_available,
    has_mamba_cuda,
    selective_scan,
    selective_scan_chunked,
    selective_scan_fused,
    selective_scan_ref,
)

scan_module = importlib.import_module("papers_shared.ssm.ops.selective_scan")

needs_fused = pytest.mark.skipif(not fused_available(), reason="no C++ compiler for the fused CPU scan")


def naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Scalar-indexed recurrence, written independently of the library (float64)."""
    b, d, l = u.shape
    n = A.shape[1]
    y = torch.zeros(b, d, l, dtype=torch.float64)
    for bi in range(b):
        for di in range(d):
            h = torch.zeros(n, dtype=torch.float64)
            for s in range(l):
                dt = float(delta[bi, di, s]) + (float(delta_bias[di]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = float(torch.nn.functional.softplus(torch.tensor(dt)))
                Bs = B[bi, :, s] if B.ndim == 3 else B[di]
                Cs = C[bi, :, s] if C.ndim == 3 else C[di]
                h = torch.exp(dt * A[di].double()) * h + dt * Bs.double() * float(u[bi, di, s])
                out = float((Cs.double() * h).sum())
                if D is not None:
                    out += float(D[di]) * float(u[bi, di, s])
                if z is not None:
                    zz = float(z[bi, di, s])
                    out *= zz / (1 + torch.exp(torch.tensor(-zz)).item())
                y[bi, di, s] = out
    return y


def make(b=2, d=3, l=37, n=4, seed=0, variable=True):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g)
    delta = torch.randn(b, d, l, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) * 2 - 0.1
    B = torch.randn(b, n, l, generator=g) if variable else torch.randn(d, n, generator=g)
    C = torch.randn(b, n, l, generator=g) if variable else torch.randn(d, n, generator=g)
    D = torch.randn(d, generator=g)
    z = torch.randn(b, d, l, generator=g)
    bias = torch.randn(d, generator=g) * 0.1
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize("variable", [True, False])
@pytest.mark.parametrize("with_z", [True, False])
def test_ref_equals_naive(variable, with_z):
    u, delta, A, B, C, D, z, bias = make(l=13, variable=variable)
    y = selective_scan_ref(u, delta, A, B, C, D, z if with_z else None, bias, delta_softplus=True)
    y0 = naive(u, delta, A, B, C, D, z if with_z else None, bias, delta_softplus=True)
    assert torch.allclose(y.double(), y0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [None, 1, 5, 16, 64])
def test_chunked_equals_sequential(chunk):
    # l=200 is not a multiple of 16 (padding path) and 64 > sqrt(l)
    u, delta, A, B, C, D, z, bias = make(b=2, d=4, l=200, n=8)
    y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    y, h = selective_scan_chunked(
        u, delta, A, B, C, D, z, bias, True, return_last_state=True, chunk_size=chunk
    )
    assert (y - y_ref).abs().max() <= 1e-5
    assert (h - h_ref).abs().max() <= 1e-5


def test_grouped_b_c():
    b, d, l, n, g = 2, 4, 20, 3, 2
    u, delta, A, _, _, D, z, bias = make(b=b, d=d, l=l, n=n)
    Bg, Cg = torch.randn(b, g, n, l), torch.randn(b, g, n, l)
    y = selective_scan(u, delta, A, Bg, Cg, D, delta_softplus=True)
    # group j serves channels [j*d/g, (j+1)*d/g)
    for j in range(g):
        sl = slice(j * d // g, (j + 1) * d // g)
        yj = selective_scan_ref(u[:, sl], delta[:, sl], A[sl], Bg[:, j], Cg[:, j], D[sl], delta_softplus=True)
        assert torch.allclose(y[:, sl], yj, atol=1e-5)


def test_gradients_match_and_are_finite_for_large_delta():
    u, delta, A, B, C, D, z, bias = make(b=1, d=3, l=50, n=4)
    inputs = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D)]
    inputs2 = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D)]
    selective_scan_chunked(*inputs, delta_softplus=True).pow(2).sum().backward()
    selective_scan_ref(*inputs2, delta_softplus=True).pow(2).sum().backward()
    for a, b in zip(inputs, inputs2):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4)
    # huge steps: decays underflow to 0, which must not produce NaN/inf anywhere
    big = (delta * 0 + 80.0).requires_grad_()
    Ar = A.clone().requires_grad_()
    y = selective_scan_chunked(u, big, Ar, B, C, D, delta_softplus=False, chunk_size=8)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(big.grad).all() and torch.isfinite(Ar.grad).all()


def test_causality():
    u, delta, A, B, C, D, z, bias = make(b=1, d=2, l=30, n=4)
    y = selective_scan(u, delta, A, B, C, D, delta_softplus=True)
    u2 = u.clone()
    u2[:, :, 20:] += 5.0
    y2 = selective_scan(u2, delta, A, B, C, D, delta_softplus=True)
    assert torch.equal(y[:, :, :20], y2[:, :, :20])
    assert not torch.allclose(y[:, :, 20:], y2[:, :, 20:])


def test_shape_errors_and_backend_errors():
    u, delta, A, B, C, D, z, bias = make()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :, :5], C)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(u, delta, A, B, C, backend="triton")
    with pytest.raises(RuntimeError, match="CUDA"):
        selective_scan(u, delta, A, B, C, backend="cuda")


def test_probe_never_raises_on_cpu():
    assert has_mamba_cuda() in (True, False)
    if not torch.cuda.is_available():
        assert has_mamba_cuda() is False


@pytest.mark.gpu
@pytest.mark.skipif(not has_mamba_cuda(), reason="needs CUDA and mamba-ssm's selective_scan_cuda extension")
def test_cuda_kernel_matches_torch():  # pragma: no cover - GPU only
    u, delta, A, B, C, D, z, bias = (t.cuda() for t in make(b=2, d=8, l=128, n=16))
    y_cuda = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="cuda")
    y_torch = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="torch")
    assert torch.allclose(y_cuda, y_torch, rtol=1e-3, atol=1e-3)


def _make64(kind, b=2, d=4, l=37, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    if kind == "var":
        B, C = r(b, n, l), r(b, n, l)
    elif kind == "const":
        B, C = r(d, n), r(d, n)
    else:
        B, C = r(b, 2, n, l), r(b, 2, n, l)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1
    return r(b, d, l), r(b, d, l) * 0.5, A, B, C, r(d), r(b, d, l), r(d) * 0.1


@pytest.mark.parametrize("kind", ["var", "const", "group"])
@pytest.mark.parametrize("chunk", [None, 1, 8, 37])
def test_hand_written_backward_matches_autograd_of_reference(kind, chunk):
    """The custom reverse-scan backward equals autograd through the sequential loop (float64),
    for every B/C layout, with padding (37 = 4*8 + 5); the last state carries no gradient."""
    xs = _make64(kind)
    a = [x.clone().requires_grad_() for x in xs]
    c = [x.clone().requires_grad_() for x in xs]
    y, h = selective_scan_chunked(*a, True, True, chunk_size=chunk)
    y0, h0 = selective_scan_ref(*c, True, True)
    assert y.dtype == torch.float64
    assert (y - y0).abs().max() < 1e-12 and (h - h0).abs().max() < 1e-12
    assert not h.requires_grad and not h0.requires_grad
    g = torch.Generator().manual_seed(2)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    wh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    ((y * wy).sum() + (h * wh).sum()).backward()
    ((y0 * wy).sum() + (h0 * wh).sum()).backward()
    for name, p, q in zip(["u", "delta", "A", "B", "C", "D", "z", "delta_bias"], a, c):
        assert p.grad.shape == q.grad.shape, name
        assert (p.grad - q.grad).abs().max() < 1e-10, name


def test_gradcheck_core():
    u, delta, A, B, C, D, _, bias = _make64("var", b=1, d=2, l=9, n=2)
    inputs = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    assert torch.autograd.gradcheck(
        lambda *x: selective_scan_chunked(*x, D, None, bias, True, chunk_size=4), inputs
    )


# --- fused CPU loop -------------------------------------------------------------------------------


@needs_fused
@pytest.mark.parametrize("kind", ["var", "const", "group"])
def test_fused_loop_matches_reference_values_and_gradients(kind):
    xs = _make64(kind, l=41)
    a = [x.clone().requires_grad_() for x in xs]
    c = [x.clone().requires_grad_() for x in xs]
    y, h = selective_scan_fused(*a, True, True)
    y0, h0 = selective_scan_ref(*c, True, True)
    assert (y - y0).abs().max() < 1e-12 and (h - h0).abs().max() < 1e-12
    assert not h.requires_grad
    wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (y * wy).sum().backward()
    (y0 * wy).sum().backward()
    for name, p, q in zip(["u", "delta", "A", "B", "C", "D", "z", "delta_bias"], a, c):
        assert (p.grad - q.grad).abs().max() < 1e-10, name


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_loop_without_bias_softplus_d_z(dtype):
    """The bare recurrence (as fsg-bnn's S5 layer calls it: n=1, constant B/C, no softplus)."""
    for kind, n in (("const", 1), ("var", 5)):
        u, delta, A, B, C, *_ = _make64(kind, n=n)
        xs = [t.to(dtype) for t in (u, delta.abs(), A, B, C)]
        a = [x.clone().requires_grad_() for x in xs]
        c = [x.clone().requires_grad_() for x in xs]
        y = selective_scan_fused(*a)
        y0 = selective_scan_ref(*c)
        tol = 1e-12 if dtype == torch.float64 else 1e-4
        assert (y - y0).abs().max() < tol
        y.pow(2).sum().backward()
        y0.pow(2).sum().backward()
        for p, q in zip(a, c):
            assert torch.allclose(p.grad, q.grad, rtol=tol, atol=tol)


@needs_fused
def test_fused_float32_threads_and_dispatch(monkeypatch):
    u, delta, A, B, C, D, z, bias = make(b=3, d=8, l=300, n=16)
    y0 = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    y1 = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="fused")
    assert y1.dtype == torch.float32 and (y1 - y0).abs().max() < 1e-4
    # several worker threads give the same values and gradients as one
    monkeypatch.setattr(scan_module, "_threads", lambda work: 3)
    ps = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    y3 = selective_scan(*ps, D, z, bias, True, backend="fused")
    y3.pow(2).sum().backward()
    monkeypatch.setattr(scan_module, "_threads", lambda work: 1)
    qs = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    selective_scan(*qs, D, z, bias, True, backend="fused").pow(2).sum().backward()
    assert torch.equal(y3, y1)
    for p, q in zip(ps, qs):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-5)


@needs_fused
@pytest.mark.parametrize("n", [5, 16])
def test_fused_result_does_not_depend_on_buffer_alignment(n):
    """Bitwise the same output for inputs at every 4-byte offset (no alignment-dependent summation)."""

    def shifted(t, k):
        buf = torch.empty(t.numel() + k, dtype=t.dtype)
        view = buf[k:].view(t.shape)
        view.copy_(t)
        return view

    u, delta, A, B, C, *_ = make(b=2, d=4, l=60, n=n)
    y0 = selective_scan_fused(u, delta, A, B, C, delta_softplus=True)
    for k in range(1, 8):
        y = selective_scan_fused(*(shifted(t, k) for t in (u, delta, A, B, C)), delta_softplus=True)
        assert torch.equal(y, y0)


def test_fused_build_failure_falls_back_to_chunked(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(_native, "_compiler", lambda: "false")  # a "compiler" that always fails
    monkeypatch.setenv("PAPERS_SHARED_KERNEL_CACHE", str(tmp_path))
    u, delta, A, B, C, D, z, bias = make()
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert not fused_available()
    y = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="torch")
    assert torch.allclose(y, selective_scan_ref(u, delta, A, B, C, D, z, bias, True), atol=1e-5)
    with pytest.raises(RuntimeError, match="could not be compiled"):
        selective_scan(u, delta, A, B, C, backend="fused")


# --- complex A --------------------------------------------------------------------------------------


def naive_complex(u, delta, A, B, C, D):
    """Scalar-indexed complex recurrence (mamba-ssm's convention: output ``2 Re(C h) + D u``);
    ``B``, ``C``: complex ``(b, n, l)`` or ``(d, n)``."""
    b, d, l = u.shape
    y = torch.zeros(b, d, l, dtype=torch.float64)
    for bi in range(b):
        for di in range(d):
            h = torch.zeros(A.shape[1], dtype=torch.complex128)
            for s in range(l):
                dt = float(delta[bi, di, s])
                Bs = B[bi, :, s] if B.ndim == 3 else B[di]
                Cs = C[bi, :, s] if C.ndim == 3 else C[di]
                h = torch.exp(dt * A[di]) * h + dt * float(u[bi, di, s]) * Bs
                y[bi, di, s] = 2 * float((Cs * h).sum().real) + float(D[di]) * float(u[bi, di, s])
    return y


def _complex_case(variable, b=2, d=3, l=11, n=4, seed=5):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    A = torch.complex(-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1, r(d, n) * 3)
    if variable:
        B, C = torch.complex(r(b, n, l), r(b, n, l)), torch.complex(r(b, n, l), r(b, n, l))
    else:
        B, C = torch.complex(r(d, n), r(d, n)), torch.complex(r(d, n), r(d, n))
    return r(b, d, l), r(b, d, l).abs() * 0.5, A, B, C, r(d)


def _interleaved(M):
    """complex ``(..., l)`` -> mamba-ssm's real ``(..., 2l)`` with real and imaginary parts interleaved."""
    return torch.view_as_real(M).flatten(-2)


@pytest.mark.parametrize("variable", [True, False])
def test_complex_reference_equals_naive_loop(variable):
    u, delta, A, B, C, D = _complex_case(variable)
    y0 = naive_complex(u, delta, A, B, C, D)
    assert (selective_scan_ref(u, delta, A, B, C, D) - y0).abs().max() < 1e-12
    if variable:  # mamba-ssm's layout: real (b, n, 2l), parts interleaved
        y1 = selective_scan_ref(u, delta, A, _interleaved(B), _interleaved(C), D)
        assert (y1 - y0).abs().max() < 1e-12


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
@pytest.mark.parametrize("variable", [True, False])
def test_complex_A_on_every_cpu_backend_values_and_gradients(backend, variable):
    if backend == "fused" and not fused_available():
        pytest.skip("no C++ compiler for the fused CPU scan")
    u, delta, A, B, C, D = _complex_case(variable, l=23)
    if variable:
        B, C = _interleaved(B), _interleaved(C)
    xs = (u, delta, A, B, C, D)
    a = [x.clone().requires_grad_() for x in xs]
    c = [x.clone().requires_grad_() for x in xs]
    y, h = selective_scan(*a, None, None, True, True, backend=backend, chunk_size=5)
    y0, h0 = selective_scan_ref(*c, None, None, True, True)
    assert y.dtype == torch.float64 and h.dtype == torch.complex128
    assert (y - y0).abs().max() < 1e-11 and (h - h0).abs().max() < 1e-11
    assert not h.requires_grad
    wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (y * wy).sum().backward()
    (y0 * wy).sum().backward()
    for name, p, q in zip(["u", "delta", "A", "B", "C", "D"], a, c):
        assert p.grad.dtype == q.grad.dtype and (p.grad - q.grad).abs().max() < 1e-10, name


def test_complex_gradcheck_chunked():
    u, delta, A, B, C, D = _complex_case(True, b=1, d=2, l=7, n=2)
    inputs = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    assert torch.autograd.gradcheck(lambda *x: selective_scan_chunked(*x, D, chunk_size=3), inputs)


def test_complex_layout_errors():
    u, delta, A, B, C, D = _complex_case(True)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B.real, C, D)  # real B of length l with complex A: needs 2l
    with pytest.raises(ValueError, match="complex B needs a complex A"):
        selective_scan(u, delta, A.real, B, C.real, D)


# --- dispatch -----------------------------------------------------------------------------------


def test_cuda_tensors_without_kernel_warn_once_and_run_the_pytorch_scan(monkeypatch):
    """The dispatcher's fallback branch: CUDA tensors (mocked) but no mamba-ssm kernel."""
    monkeypatch.setattr(scan_module, "_fallback_warned", False)
    monkeypatch.setattr(scan_module, "has_mamba_cuda", lambda: False)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    u, delta, A, B, C, D, z, bias = make()
    with pytest.warns(RuntimeWarning, match="mamba-ssm's selective-scan kernel is not available"):
        y = selective_scan(u, delta, A, B, C, D, z, bias, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        y2 = selective_scan(u, delta, A, B, C, D, z, bias, True)
        y3 = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="chunked")  # explicit: silent
    monkeypatch.undo()
    y0 = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    assert torch.equal(y, y2) and torch.equal(y, y3) and (y - y0).abs().max() < 1e-5


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
def test_last_state_carries_no_gradient_on_any_backend(backend):
    if backend == "fused" and not fused_available():
        pytest.skip("no C++ compiler for the fused CPU scan")
    u, delta, A, B, C, D, z, bias = make()
    ps = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    y, h = selective_scan(*ps, D, z, bias, True, True, backend=backend)
    assert y.requires_grad and not h.requires_grad and h.grad_fn is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backends_agree_with_cpu_including_complex_and_last_state():  # pragma: no cover - GPU only
    u, delta, A, B, C, D, z, bias = make(b=2, d=8, l=128, n=16)
    cuda = [t.cuda() for t in (u, delta, A, B, C, D, z, bias)]
    y0, h0 = selective_scan(u, delta, A, B, C, D, z, bias, True, True, backend="torch")
    y1, h1 = selective_scan(*cuda, True, True)  # kernel when installed, else the warned fallback
    assert torch.allclose(y1.cpu(), y0, rtol=1e-3, atol=1e-3) and torch.allclose(h1.cpu(), h0, atol=1e-3)
    assert not h1.requires_grad
    uc, dc, Ac, Bc, Cc, Dc = _complex_case(True, l=64)
    args = [t.float() if not t.is_complex() else t.to(torch.complex64) for t in (uc, dc, Ac)]
    Bi, Ci = _interleaved(Bc).float(), _interleaved(Cc).float()
    yc0 = selective_scan(*args, Bi, Ci, Dc.float(), backend="torch")
    yc1 = selective_scan(*(t.cuda() for t in args), Bi.cuda(), Ci.cuda(), Dc.float().cuda())
    assert torch.allclose(yc1.cpu(), yc0, rtol=1e-3, atol=1e-3)
