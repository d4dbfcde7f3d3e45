import pytest
import torch
import torch.nn.functional as F

import fsg_bnn as fb
from papers_shared.errors import CheckpointError


def test_resnet20_official_layer_registry():
    model = fb.binarize(fb.resnet20())
    names = [n for n, _ in fb.binary_layers(model)]
    assert len(names) == 22
    assert names[:4] == ["conv1", "fc", "layer1.0.conv1", "layer1.0.conv2"]
    assert not any(n.startswith("layer1") and "downsample" in n for n in names)
    for stage in (2, 3):
        i = names.index(f"layer{stage}.0.downsample.0")
        assert names[i + 1 : i + 3] == [f"layer{stage}.0.conv1", f"layer{stage}.0.conv2"]
    assert [m.lre_index for _, m in fb.binary_layers(model)] == list(range(22))
    assert len(fb.binary_layers(fb.binarize(fb.resnet56()))) == 58


def test_resnet_forward_shapes_and_bn1d_before_fc():
    model = fb.resnet_cifar(32, 100)
    assert isinstance(model.bn2, torch.nn.BatchNorm1d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError, match="6n\\+2"):
        fb.resnet_cifar(21)
    with pytest.raises(ValueError, match="unknown arch"):
        fb.build_model("vgg16", 10)


def test_binarize_shares_parameters_and_keeps_keys():
    fp = fb.resnet20()
    keys = list(fp.state_dict())
    w = fp.layer2[0].conv1.weight
    model = fb.binarize(fp)
    assert model.layer2[0].conv1.weight is w
    assert list(model.state_dict()) == keys
    assert isinstance(model.fc, fb.BinaryLinear) and isinstance(model.conv1, fb.BinaryConv2d)


def test_binarize_skip_and_errors():
    model = fb.binarize(fb.mlp(16, (8,), 4), skip=["1"])
    assert type(model[1]) is torch.nn.Linear and isinstance(model[4], fb.BinaryLinear)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        fb.binarize(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ValueError, match="binarize"):
        fb.binary_layers(fb.mlp())
    with pytest.raises(TypeError):
        fb.binarize("resnet20")


def test_binary_forward_uses_sign_weights_and_ste_gradient():
    torch.manual_seed(0)
    layer = fb.binarize(torch.nn.Sequential(torch.nn.Linear(6, 3)))[0]
    x = torch.randn(4, 6)
    out = layer(x)
    assert torch.allclose(out, F.linear(x, torch.sign(layer.weight.detach()), layer.bias))
    out.sum().backward()
    g_hat = layer.quantized_grad  # dloss/dW^ captured by the hook
    assert torch.allclose(g_hat, torch.ones(4, 3).t() @ x)
    w = layer.weight.detach()
    t = torch.tanh(w)
    # STE chain: dW^/dW~ = 2 (round STE), dW~/dW = (1 - tanh^2) / max|tanh| / 2
    assert torch.allclose(layer.weight.grad, g_hat * (1 - t**2) / t.abs().max(), atol=1e-6)


def test_bwn_scale_in_ste_mode():
    torch.manual_seed(0)
    layer = fb.binarize(torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False)), quantizer="bwn")[0]
    x = torch.randn(2, 6)
    w = layer.weight.detach()
    assert torch.allclose(layer(x), x @ (w.abs().mean() * torch.sign(w)).t())
    layer.bwn_scale = False
    assert torch.allclose(layer(x), x @ torch.sign(w).t())


def test_load_fp_checkpoint_round_trip_and_errors(tmp_path):
    src = fb.resnet20()
    path = tmp_path / "fp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = fb.resnet20()
    assert fb.load_fp_checkpoint(dst, path) == []
    assert torch.equal(dst.fc.weight, src.fc.weight)
    with pytest.raises(FileNotFoundError, match="pretrain"):
        fb.load_fp_checkpoint(dst, tmp_path / "missing.pt")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no parameter name"):
        fb.load_fp_checkpoint(dst, tmp_path / "bad.pt")


def test_linear_multifc_collapses_to_its_exact_product():
    """Without an activation MultiFC is the scalar w3 . W2 . w1: same values and gradients as the
    layer-by-layer evaluation (float64, so only rounding differs)."""
    torch.manual_seed(0)
    fast = fb.MultiFC(100, 3).double()
    ref = fb.MultiFC(100, 3, collapse=False).double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(500, 1, dtype=torch.float64)
    g = torch.randn(500, 1, dtype=torch.float64)
    y, y_ref = fast(x), ref(x)
    assert fast.collapse and not ref.collapse
    assert torch.allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    (g * y).sum().backward()
    (g * y_ref).sum().backward()
    for p, q in zip(fast.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-14)
    assert not fb.MultiFC(8, 3, "relu").collapse  # a nonlinearity keeps the layers
