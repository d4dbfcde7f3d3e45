"""The compiled one-channel Mamba block (papers_shared.ssm.ops.mamba_block) against the module's
PyTorch path: values and every gradient, packing, block boundaries, fallbacks and errors."""

import pytest
import torch

from papers_shared.ssm.modules import Mamba
from papers_shared.ssm.ops import _native
from papers_shared.ssm.ops.mamba_block import mamba_block_available, mamba_block_packed

needs_kernel = pytest.mark.skipif(not mamba_block_available(), reason="no C++ compiler: kernel not built")


def _mamba(d_state, d_conv, expand, dtype=torch.float64, backend="torch", seed=0):
    torch.manual_seed(seed)
    m = Mamba(1, d_state, d_conv, expand, backend=backend).to(dtype)
    with torch.no_grad():  # move away from the structured init so every term matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _kernel(m, u, cu):
    return mamba_block_packed(
        u, cu, m.in_proj.weight, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
        m.dt_proj.bias, -torch.exp(m.A_log), m.D, m.out_proj.weight,
    )  # fmt: skip


@needs_kernel
@pytest.mark.parametrize(
    ("d_state", "d_conv", "expand"), [(4, 4, 4), (16, 8, 6), (5, 3, 3), (4, 1, 2)]
)  # N = 4 / 16 compile-time paths, N = 5 the runtime one; d_conv 1 has no left context
def test_packed_kernel_equals_pytorch_block_values_and_gradients(d_state, d_conv, expand):
    m = _mamba(d_state, d_conv, expand)
    lengths = [130, 1, 0, 64, 200, 2]  # several 64-position blocks, a block boundary, empty, < d_conv
    g = torch.Generator().manual_seed(1)
    u = torch.randn(sum(lengths), dtype=torch.float64, generator=g, requires_grad=True)
    cu = torch.tensor([0, *lengths]).cumsum(0)
    bounds = cu.tolist()
    ref = torch.cat([m(u[a:b].view(1, -1, 1)).view(-1) for a, b in zip(bounds, bounds[1:]) if b > a])
    gout = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    grads_ref = torch.autograd.grad((ref * gout).sum(), [u, *m.parameters()])
    out = _kernel(m, u, cu)
    grads = torch.autograd.grad((out * gout).sum(), [u, *m.parameters()])
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["u", *(n for n, _ in m.named_parameters())], grads, grads_ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


@needs_kernel
def test_module_forward_runs_the_kernel_and_matches_the_scan_path():
    ref = _mamba(4, 4, 4, torch.float32, backend="torch")
    fast = _mamba(4, 4, 4, torch.float32, backend="auto")
    x = torch.randn(3, 150, 1, requires_grad=True)
    assert fast._block_kernel(x) and not ref._block_kernel(x)
    y_ref, y = ref(x), fast(x)
    assert torch.allclose(y, y_ref, atol=1e-5)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.allclose(gx, gx_ref, atol=1e-4)
    # forward_packed of equal-length rows is the batched forward
    packed = fast.forward_packed(x.detach().reshape(-1), torch.arange(4) * 150)
    assert torch.equal(packed.view(3, 150, 1), fast(x.detach()))


@needs_kernel
def test_outputs_do_not_depend_on_the_thread_count_and_repeat_exactly():
    m = _mamba(4, 4, 4, torch.float32)
    u = torch.randn(5000)
    cu = torch.tensor([0, 1000, 3500, 5000])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _kernel(m, u, cu)
        torch.set_num_threads(2)
        two, again = _kernel(m, u, cu), _kernel(m, u, cu)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two) and torch.equal(two, again)


def test_forward_packed_falls_back_per_sequence_without_the_kernel(monkeypatch):
    m = _mamba(4, 4, 2, torch.float64, backend="auto")
    u = torch.randn(90, dtype=torch.float64)
    cu = torch.tensor([0, 30, 30, 90])
    expected = torch.cat([m(u[:30].view(1, -1, 1)).view(-1), m(u[30:].view(1, -1, 1)).view(-1)])
    monkeypatch.setattr(_native, "_state", {"lib": None})
    assert not m._block_kernel(u)
    assert torch.allclose(m.forward_packed(u, cu), expected, atol=1e-12)
    with pytest.raises(ValueError, match="cu_seqlens"):
        m.forward_packed(u, torch.tensor([0, 50, 40, 90]))


@needs_kernel
def test_bad_input_is_refused():
    m = _mamba(4, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="1-d"):
        _kernel(m, torch.randn(2, 5), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        _kernel(m, torch.randn(10), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="d_model = 1"):
        Mamba(2, 4).forward_packed(torch.randn(10), torch.tensor([0, 10]))
