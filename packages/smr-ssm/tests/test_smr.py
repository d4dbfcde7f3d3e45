"""The SMR module: identity at init, causality, receptive field, the reference loop, gradients, the
memory-1 ablation, its streaming form and bad inputs."""

import math

import pytest
import torch

from smr_ssm import SMR_PRESETS, SMRWrapper, StateMemoryReplay, resolve_smr
from smr_ssm.layers import S4D
from smr_ssm.smr import ACTIVATIONS


def explicit_smr(u, W, b, phi):
    """The SMR equations as a double loop over k and j (independent of the module's vectorised code)."""
    B, L, H = u.shape
    m = W.shape[1]
    out = torch.empty_like(u)
    for k in range(L):
        g = b.clone() if b is not None else torch.zeros(H, dtype=u.dtype)
        g = g.expand(B, H).clone()
        for j in range(m):
            if k - j >= 0:
                g = g + W[:, j] * u[:, k - j]
        out[:, k] = phi(g) * u[:, k]
    return out


PHI = {
    "identity": lambda g: g,
    "sigmoid2": lambda g: 2 * torch.sigmoid(g),
    "silu": torch.nn.functional.silu,
    "softplus1": lambda g: torch.nn.functional.softplus(g + math.log(math.e - 1)),
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_at_init_bit_for_bit(activation, dtype):
    smr = StateMemoryReplay(5, memory_len=4, activation=activation).to(dtype)
    u = torch.randn(3, 17, 5, dtype=dtype) * 10
    assert torch.equal(smr(u), u)
    assert torch.equal(smr.scale(u), torch.ones_like(u))
    ut = u.transpose(1, 2).contiguous()
    assert torch.equal(smr.forward_channels_first(ut), ut)


def test_s4d_with_smr_at_init_equals_s4d_without():
    base = S4D(6, 8)
    with_smr = S4D(6, 8, smr="default")
    missing = with_smr.load_state_dict(base.state_dict(), strict=False)
    assert set(missing.missing_keys) == {"modulation.weight", "modulation.bias"}  # SMR sits in the hook
    u = torch.randn(2, 40, 6)
    assert torch.equal(base(u), with_smr(u))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("memory_len", [1, 2, 5])
def test_reference_formula_double_loop(activation, memory_len, f64):
    smr = StateMemoryReplay(4, memory_len=memory_len, activation=activation, init="random")
    with torch.no_grad():
        smr.bias.normal_()
    u = torch.randn(2, 11, 4)
    ref = explicit_smr(u, smr.weight.detach(), smr.bias.detach(), PHI[activation])
    assert (smr(u) - ref).abs().max() < 1e-12
    # the channels-first (conv1d) path used by the convolution-mode hosts
    assert (smr.forward_channels_first(u.transpose(1, 2)).transpose(1, 2) - ref).abs().max() < 1e-12


def test_literal_preset_is_u_times_conv_of_u(f64):
    smr = StateMemoryReplay(3, **SMR_PRESETS["literal"])
    assert smr.bias is None and smr.init == "random" and smr.activation == "identity"
    u = torch.randn(2, 9, 3)
    W = smr.weight.detach()
    conv = torch.zeros_like(u)
    for j in range(W.shape[1]):
        conv[:, j:] += W[:, j] * u[:, : 9 - j]
    assert (smr(u) - u * conv).abs().max() < 1e-12


def test_memory_len_one_is_a_pointwise_gate(f64):
    smr = StateMemoryReplay(4, memory_len=1, activation="sigmoid2", init="random")
    u = torch.randn(2, 7, 4)
    W0, b = smr.weight[:, 0].detach(), smr.bias.detach()
    assert (smr(u) - 2 * torch.sigmoid(W0 * u + b) * u).abs().max() < 1e-14


def test_causality():
    smr = StateMemoryReplay(3, memory_len=4, init="random")
    u = torch.randn(2, 20, 3)
    u2 = u.clone()
    u2[:, 11:] = torch.randn(2, 9, 3)
    assert torch.equal(smr(u)[:, :11], smr(u2)[:, :11])
    assert not torch.allclose(smr(u)[:, 11:], smr(u2)[:, 11:])


@pytest.mark.parametrize("memory_len", [1, 3, 6])
def test_receptive_field(memory_len, f64):
    smr = StateMemoryReplay(2, memory_len=memory_len, init="random")
    u = torch.randn(1, 12, 2, requires_grad=True)
    k = 10
    (grad,) = torch.autograd.grad(smr(u)[0, k].sum(), u)
    for j in range(0, k + 1):
        nonzero = grad[0, k - j].abs().sum() > 0
        assert nonzero == (j < memory_len), (j, memory_len)
    assert grad[0, k + 1 :].abs().sum() == 0


def test_gradients_random_and_identity_init():
    u = torch.randn(2, 16, 4)
    smr = StateMemoryReplay(4, init="random")
    layer = S4D(4, 8, smr={"init": "random"})
    layer(u).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    smr = StateMemoryReplay(4)  # identity init: W = 0 must still receive gradient
    (smr(u) * torch.randn_like(u)).sum().backward()
    assert smr.weight.grad.abs().min() > 0 and smr.bias.grad.abs().sum() > 0


def test_streaming_step_equals_forward(f64):
    for m in (1, 2, 5):
        smr = StateMemoryReplay(3, memory_len=m, activation="softplus1", init="random")
        u = torch.randn(2, 13, 3)
        full = smr(u)
        cache = smr.allocate_cache(2)
        outs = []
        for t in range(13):
            y, cache = smr.step(u[:, t], cache)
            outs.append(y)
        assert (torch.stack(outs, 1) - full).abs().max() < 1e-13
        assert cache.buf.shape == (2, m - 1, 3)


def test_conv_only_ablation(f64):
    smr = StateMemoryReplay(3, memory_len=3, mode="conv_only", init="random")
    u = torch.randn(1, 8, 3)
    g = smr.replay(u)
    assert torch.allclose(smr(u), u + g)
    assert torch.equal(StateMemoryReplay(3, mode="conv_only")(u), u)  # identity init: W = 0, b = 0
    with pytest.raises(ValueError, match="conv_only"):
        StateMemoryReplay(3, mode="conv_only", activation="silu")


def test_wrapper_applies_smr_to_input():
    inner = torch.nn.Linear(4, 4)
    wrapped = SMRWrapper(inner, 4, smr="literal")
    u = torch.randn(2, 5, 4)
    assert torch.allclose(wrapped(u), inner(wrapped.smr(u)))


def test_scale_statistics_recorded():
    smr = StateMemoryReplay(4, init="random")
    smr.track_stats = True
    smr(torch.randn(2, 30, 4))
    assert set(smr.last_stats) == {"scale_mean", "scale_std", "scale_neg_frac"}
    assert 0.0 <= smr.last_stats["scale_neg_frac"] <= 1.0


def test_resolve_presets_and_errors():
    assert resolve_smr(None) is None and resolve_smr(False) is None
    assert resolve_smr(True) == SMR_PRESETS["default"]
    assert resolve_smr({"preset": "literal", "memory_len": 8})["memory_len"] == 8
    with pytest.raises(ValueError, match="valid presets"):
        resolve_smr("nope")
    with pytest.raises(ValueError, match="valid options"):
        resolve_smr({"memory": 3})
    with pytest.raises(ValueError, match="memory_len"):
        StateMemoryReplay(4, memory_len=0)
    with pytest.raises(ValueError, match="activation"):
        StateMemoryReplay(4, activation="tanh")


def test_bad_inputs_give_clear_errors():
    smr = StateMemoryReplay(4)
    with pytest.raises(ValueError, match=r"\(batch, length, channels\)"):
        smr(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="channels=4"):
        smr(torch.randn(5, 4))
    with pytest.raises(TypeError, match="floating"):
        smr(torch.ones(2, 5, 4, dtype=torch.long))
    bad = torch.randn(2, 5, 4)
    bad[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        smr(bad)
    bad[0, 2, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        S4D(4, 8, smr="default")(bad)
    with pytest.raises(ValueError, match="u_t must be"):
        smr.step(torch.randn(2, 5, 4))


@pytest.mark.parametrize("memory_len", [1, 3, 6])
@pytest.mark.parametrize("bias", [True, False])
def test_hand_written_replay_backward_gradcheck(memory_len, bias, f64):
    """The replay's custom backward (both layouts; L=5 < m=6 included) against finite differences."""
    from smr_ssm.smr import _CausalReplay

    u = torch.randn(2, 5, 3, requires_grad=True)
    W = torch.randn(3, memory_len, requires_grad=True)
    b = torch.randn(3, requires_grad=True) if bias else None
    inputs = (u, W, b) if bias else (u, W)
    assert torch.autograd.gradcheck(
        lambda *a: _CausalReplay.apply(a[0], a[1], a[2] if bias else None, 1), inputs
    )
    assert torch.autograd.gradcheck(
        lambda *a: _CausalReplay.apply(a[0].transpose(1, 2), a[1], a[2] if bias else None, 2), inputs
    )
