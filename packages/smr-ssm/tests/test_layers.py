"""SMR in this package's hosts: convolution mode == recurrence == streaming decode with SMR installed (the
convolution-mode compatibility SMR is built for) in S4 (DPLR), Mega and SPADE-lite, SMR at init in Mamba,
the wrappers' options and accessors, and gradients through every block.

S4D, S5 and Mamba are the shared layers: their convolution == recurrence == decoding, causality, scan
modes and timestep handling with an input modulation installed are tested in
shared/tests/test_ssm_modules.py, and SMR's own causality and streaming step in test_smr.py."""

import pytest
import torch

from smr_ssm import S4, S4D, S5, MambaMixer, MegaEMA, MegaLayer, SPADELite, SSMBlock

SMR_RANDOM = {"init": "random"}


def decode(layer, u, ts=None):
    state, outs = None, []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state, None if ts is None else ts[:, t])
        outs.append(y)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("cls", [S4])
def test_conv_equals_recurrence_with_smr(cls, f64):
    """L=64, H=4, N=8, tolerance 1e-9 in float64."""
    layer = cls(4, 8, smr=SMR_RANDOM)
    u = torch.randn(2, 64, 4)
    y_conv = layer(u, mode="conv")
    assert (y_conv - layer(u, mode="recurrent")).abs().max() < 1e-9
    assert (y_conv - decode(layer, u)).abs().max() < 1e-9


@pytest.mark.parametrize("cls", [S4, MegaEMA])
def test_bidirectional_conv_equals_recurrence(cls, f64):
    layer = cls(4, 8 if cls is S4 else 4, smr=SMR_RANDOM, bidirectional=True)
    u = torch.randn(2, 33, 4)
    assert (layer(u, mode="conv") - layer(u, mode="recurrent")).abs().max() < 1e-9
    with pytest.raises(RuntimeError, match="future"):
        layer.step(u[:, 0])


@pytest.mark.parametrize("cls", [S4, MegaEMA])
def test_uniformly_rescaled_grid_stays_convolvable(cls, f64):
    layer = cls(3, 8 if cls is S4 else 4, smr=SMR_RANDOM)
    u = torch.randn(2, 20, 3)
    ts = torch.tensor([[1.5], [0.5]]).expand(2, 20)
    assert (layer(u, ts, mode="conv") - layer(u, ts, mode="recurrent")).abs().max() < 1e-9
    jitter = torch.rand(2, 20) + 0.5
    with pytest.raises(ValueError, match="time-invariant"):
        layer(u, jitter, mode="conv")
    assert (layer(u, jitter) - decode(layer, u, jitter)).abs().max() < 1e-9


def test_mamba_smr_identity_init_is_noop():
    base = MambaMixer(8)
    smr = MambaMixer(8, smr="default")
    smr.load_state_dict(base.state_dict(), strict=False)
    u = torch.randn(2, 10, 8)
    assert torch.allclose(base(u), smr(u), atol=1e-6)


@pytest.mark.parametrize(
    "cls,kw",
    [
        (MegaLayer, {"chunk_size": 5}),
        (MegaLayer, {"attention": False}),
        (SPADELite, {"window": 4, "n_heads": 2, "d_state": 8}),
    ],
)
def test_secondary_hosts_decode_equals_forward(cls, kw, f64):
    layer = cls(8, smr=SMR_RANDOM, **kw)
    u = torch.randn(2, 13, 8)
    ts = torch.rand(2, 13) + 0.5
    assert (layer(u, ts) - decode(layer, u, ts)).abs().max() < 1e-9


@pytest.mark.parametrize("layer_type", ["s4d", "s4", "s5", "mamba", "mega", "mega_ema", "spade"])
def test_block_gradients_flow_to_ssm_and_smr(layer_type):
    kw = {"d_state": 8} if layer_type not in ("mega", "mega_ema") else {"ndim": 4}
    if layer_type == "spade":
        kw.update(window=4, n_heads=2)
    block = SSMBlock(8, layer_type, kw, smr=SMR_RANDOM, ffn="glu")
    u = torch.randn(2, 12, 8)
    block(u).pow(2).mean().backward()
    params = dict(block.named_parameters())
    smr_params = [p for n, p in params.items() if ".modulation" in n]
    assert smr_params
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in smr_params)


def test_bidirectional_mamba_block_and_padding_mask():
    block = SSMBlock(8, "mamba", {"d_state": 4}, smr="default", bidirectional=True)
    u = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10)
    mask[1, 7:] = 0
    y = block(u, mask=mask)
    assert y.shape == u.shape and torch.all(y[1, 7:] == 0)


def test_constructor_errors_and_smr_accessors():
    with pytest.raises(ValueError, match="modulation_position"):
        MambaMixer(8, smr_position="post")
    with pytest.raises(ValueError, match="mode"):
        S5(4, 8, mode="fft")
    with pytest.raises(ValueError, match="unknown SMR preset"):
        S4D(4, 8, smr="nope")
    bi = S4D(4, 8, smr="default", bidirectional=True)
    assert bi.smr is bi.modulation and bi.smr_bwd is bi.modulation_bwd and bi.smr is not bi.smr_bwd
    assert (
        S4D(4, 8).smr is None
        and MambaMixer(8, smr="default", smr_position="scan_only").smr_position == "scan_only"
    )
    skip = S4D(4, 8, smr={"skip_uses": "smr"})
    assert skip.skip_modulated and not S4D(4, 8, smr="default").skip_modulated
