import pytest
import torch

import fsg_bnn as fb
from papers_shared.ssm.modules import Mamba
from papers_shared.ssm.ops import has_mamba_cuda, selective_scan


def small_slow(num_layers=3, **kw):
    torch.manual_seed(0)
    return fb.SlowNet(num_layers, d_state=4, d_conv=4, expand=4, **kw)


def test_lre_output_length_and_layer_specificity():
    net = small_slow()
    seq = torch.randn(1, 37, 1)
    outs = [net(seq, i) for i in range(3)]
    assert all(o.shape == seq.shape for o in outs)
    with torch.no_grad():
        net.layer_embedding.weight[1] += 1.0
    after = [net(seq, i) for i in range(3)]
    assert torch.equal(after[0], outs[0]) and torch.equal(after[2], outs[2])
    assert not torch.allclose(after[1], outs[1])


def test_gradient_reaches_lre_and_no_lre_ablation():
    net = small_slow()
    net(torch.randn(1, 20, 1), 2).sum().backward()
    g = net.layer_embedding.weight.grad
    assert g[2].abs() > 0 and g[0] == 0 and g[1] == 0
    plain = small_slow(use_lre=False)
    seq = torch.randn(1, 20, 1)
    assert torch.equal(plain(seq, 0), plain(seq, 2))


def test_batched_layers_equal_per_layer_calls():
    net = small_slow()
    seqs = torch.randn(3, 40, 1)
    batched = net(seqs, torch.tensor([0, 2, 1]))
    for i, layer in enumerate([0, 2, 1]):
        assert torch.allclose(batched[i : i + 1], net(seqs[i : i + 1], layer), atol=1e-6)
    # right padding does not change the outputs of the real positions (causality)
    padded = net(torch.cat([seqs[:1], torch.zeros(1, 9, 1)], 1), 0)[:, :40]
    assert torch.allclose(padded, net(seqs[:1], 0), atol=1e-6)


@pytest.mark.parametrize("kind", ["mamba", "s4", "s5"])
def test_sequence_models_are_causal(kind):
    torch.manual_seed(0)
    net = fb.SlowNet(2, kind, d_state=4, d_conv=4, expand=4, s4_d_model=8, s5_dim=4, s5_state=4)
    x = torch.randn(1, 50, 1)
    y = net(x, 1)
    x2 = x.clone()
    x2[0, 30] += 3.0
    y2 = net(x2, 1)
    assert torch.allclose(y[:, :30], y2[:, :30], atol=1e-6)
    assert not torch.allclose(y[:, 30:], y2[:, 30:])


def test_mamba_scan_matches_sequential_reference_values_and_gradients():
    torch.manual_seed(0)
    fast = Mamba(1, 4, 4, 4, backend="torch", chunk_size=16)
    ref = Mamba(1, 4, 4, 4, backend="ref")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 200, 1)
    y, y_ref = fast(x), ref(x)
    assert torch.allclose(y, y_ref, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5), name


def test_shared_scan_at_fsg_shapes_and_large_delta_no_nan():
    torch.manual_seed(0)
    b, d, n, length = 1, 6, 4, 203  # length not a multiple of the chunk
    u, delta = torch.randn(b, d, length), torch.randn(b, d, length) * 30
    A = -torch.rand(d, n) - 0.5
    B, C = torch.randn(b, n, length), torch.randn(b, n, length)
    args = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    y = selective_scan(*args, delta_softplus=True, backend="torch", chunk_size=16)
    y_ref = selective_scan(u, delta, A, B, C, delta_softplus=True, backend="ref")
    assert torch.allclose(y, y_ref, atol=1e-5)
    y.square().sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args)


def test_s5_layer_is_exact_zoh_recurrence():
    torch.manual_seed(0)
    layer = fb.S5SequenceModel(dim=3, state_dim=5).s5  # the shared real-diagonal S5
    u = torch.randn(1, 30, 3)
    A, dt = -torch.exp(layer.A_log), torch.exp(layer.log_dt)
    Abar = torch.exp(dt * A)
    Bbar = ((Abar - 1) / A)[:, None] * layer.B
    x, ys = torch.zeros(5), []
    for k in range(30):
        x = Abar * x + Bbar @ u[0, k]
        ys.append(layer.C[0] @ x + layer.D * u[0, k])
    assert torch.allclose(layer(u)[0], torch.stack(ys), atol=1e-5)


def test_bad_inputs():
    net = small_slow()
    with pytest.raises(ValueError, match="batch, length, 1"):
        net(torch.randn(5, 1), 0)
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((1, 5, 1), float("nan")), 0)
    with pytest.raises(IndexError):
        net(torch.randn(1, 5, 1), 7)
    with pytest.raises(ValueError, match="kind"):
        fb.SlowNet(2, "transformer")
    with pytest.raises(ValueError, match="backend"):
        fb.SlowNet(2, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_mamba_cuda()), reason="needs CUDA and mamba-ssm")
def test_cuda_kernel_matches_cpu_scan():
    torch.manual_seed(0)
    block = Mamba(1, 16, 8, 10, backend="torch")
    x = torch.randn(1, 300, 1)
    y_cpu = block(x)
    cuda = Mamba(1, 16, 8, 10, backend="cuda").cuda()
    cuda.load_state_dict(block.state_dict())
    assert torch.allclose(cuda(x.cuda()).cpu(), y_cpu, atol=1e-4)


@pytest.mark.parametrize("kind", ["mamba", "s4"])
def test_forward_packed_equals_per_layer_calls_and_keeps_the_last_outputs(kind):
    torch.manual_seed(0)
    net = fb.SlowNet(3, kind, d_state=4, d_conv=4, expand=4, s4_d_model=8)
    seqs = [torch.randn(70), torch.randn(5), torch.randn(130)]
    layers, keep = [2, 0, 1], [10, 5, 64]
    outs = net.forward_packed(seqs, layers, keep)
    for s, i, k, o in zip(seqs, layers, keep, outs):
        assert torch.allclose(o, net(s.view(1, -1, 1), i).view(-1)[-k:], atol=1e-5)
    (outs[0].sum() + outs[2].sum()).backward()  # the LRE tokens of the used layers get a gradient
    g = net.layer_embedding.weight.grad.view(-1)
    assert g[2] != 0 and g[1] != 0 and g[0] == 0
    with pytest.raises(ValueError, match="keep_last"):
        net.forward_packed(seqs, layers, [10, 6, 1])
