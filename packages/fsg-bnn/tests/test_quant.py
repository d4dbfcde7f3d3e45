import pytest
import torch

import fsg_bnn as fb


def test_dorefa_range_and_binary_values():
    w = torch.randn(1000)
    wt = fb.dorefa_preprocess(w)
    assert wt.min() >= 0 and wt.max() <= 1
    q = fb.quantize(wt, "dorefa", 1)
    assert set(q.unique().tolist()) <= {-1.0, 1.0}
    nz = w != 0
    assert torch.equal(q[nz], torch.sign(w)[nz])  # 1-bit DoReFa is sign(W) up to ties at 0


def test_round_ste_backward_is_clipped_identity():
    x = torch.tensor([-1.5, -0.3, 0.2, 0.9, 1.0, 1.7], requires_grad=True)
    fb.RoundSTE.apply(x, 1).backward(torch.arange(1.0, 7.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 0.0]))


def test_sign_ste_backward_gate():
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    fb.SignSTE.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_calibration_formula_and_factor_half():
    w = torch.randn(50, dtype=torch.float64, requires_grad=True)
    t = torch.tanh(w.detach())
    c = fb.calibration(w, "dorefa")
    assert torch.allclose(c, (1 - t**2) / t.abs().max())
    # autograd of A (max detached) is exactly c / 2: the official code drops the 1/2 (meta_quantized_module.py)
    jac = torch.autograd.grad(fb.dorefa_preprocess(w).sum(), w)[0]
    assert torch.allclose(jac, c / 2)
    assert torch.equal(fb.calibration(w, "bwn"), torch.ones(50, dtype=torch.float64))


def test_multibit_dorefa_levels():
    q = fb.quantize(torch.linspace(0, 1, 101), "dorefa", 2)
    assert torch.allclose(q.unique(), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))


def test_bad_quantizer_and_bits():
    with pytest.raises(ValueError, match="unknown quantizer"):
        fb.quantize(torch.zeros(3), "ternary")
    with pytest.raises(ValueError, match="bits"):
        fb.quantize(torch.zeros(3), "dorefa", 0)
    with pytest.raises(ValueError, match="1-bit"):
        fb.quantize(torch.zeros(3), "bwn", 2)
