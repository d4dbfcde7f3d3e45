import pytest
import torch

from fsg_bnn import HistoricalGradientStorage


def grads(k, n=6):
    return [torch.randn(2, n // 2) for _ in range(k)]


def test_length_one_keeps_only_current():
    h = HistoricalGradientStorage(1)
    for g in grads(4):
        seq = h.push("a", g)
        assert torch.equal(seq, g.reshape(1, -1, 1))


def test_growth_then_window_oldest_first():
    h = HistoricalGradientStorage(3)
    gs = grads(5)
    for m, g in enumerate(gs, start=1):
        seq = h.push("a", g)
        assert seq.shape == (1, min(m, 3) * 6, 1)
    assert torch.equal(seq.view(-1), torch.cat([g.reshape(-1) for g in gs[-3:]]))
    assert torch.equal(h.current("a", seq), gs[-1].reshape(-1))


def test_stored_tensors_are_detached_copies():
    h = HistoricalGradientStorage(2)
    g = torch.randn(6, requires_grad=True)
    seq = h.push("a", g * 2)
    assert not seq.requires_grad
    with torch.no_grad():
        g.add_(1.0)
    assert torch.equal(h.sequence("a").view(-1), seq.view(-1))


def test_coordinate_layout_and_layers_are_independent():
    h = HistoricalGradientStorage(2, layout="coordinate")
    g1, g2, g3 = torch.randn(4), torch.randn(4), torch.randn(5)
    h.push("a", g1)
    seq = h.push("a", g2)
    h.push("b", g3)
    assert seq.shape == (4, 2, 1) and torch.equal(seq[:, :, 0], torch.stack([g1, g2], 1))
    assert h.count("a") == 2 and h.count("b") == 1


def test_state_round_trip_and_errors():
    h = HistoricalGradientStorage(2)
    for g in grads(3):
        h.push("a", g)
    h2 = HistoricalGradientStorage(2)
    h2.load_state_dict(h.state_dict())
    assert torch.equal(h2.sequence("a"), h.sequence("a"))
    with pytest.raises(ValueError, match="entries"):
        h.push("a", torch.randn(7))
    with pytest.raises(ValueError, match="length"):
        HistoricalGradientStorage(0)
    with pytest.raises(ValueError, match="layout"):
        HistoricalGradientStorage(2, layout="bogus")
    with pytest.raises(ValueError, match="length=2"):
        HistoricalGradientStorage(3).load_state_dict(h.state_dict())
    with pytest.raises(KeyError):
        h.sequence("missing")
