import pytest
import torch

from sr_cis.prototypes import PrototypeHead, compute_prototypes, concat_heads


def test_euclid_head_is_ncm():
    g = torch.Generator().manual_seed(0)
    P = torch.randn(7, 5, generator=g)
    h = torch.randn(100, 5, generator=g)
    head = PrototypeHead.from_prototypes(P, list(range(7)))
    z = head(h)
    d2 = torch.cdist(h, P) ** 2
    assert torch.equal(z.argmax(1), d2.argmin(1))
    # P h + b = -1/2 ||h - p||^2 + 1/2 ||h||^2
    ref = -0.5 * d2 + 0.5 * (h * h).sum(1, keepdim=True)
    assert torch.allclose(z, ref, atol=1e-4)


def test_hand_computed_values():
    head = PrototypeHead.from_prototypes(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), [3, 8])
    assert torch.allclose(head.bias, torch.tensor([-0.5, -2.0]))
    z = head(torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(z, torch.tensor([[0.5, 0.0]]))
    cos = PrototypeHead.from_prototypes(
        torch.tensor([[2.0, 0.0], [0.0, 3.0]]), [0, 1], norm="cosine", tau=0.1
    )
    assert torch.allclose(cos(torch.tensor([[1.0, 1.0]])), torch.full((1, 2), 2**-0.5 / 0.1), atol=1e-5)
    assert torch.allclose(cos.bias, torch.zeros(2))


def test_compute_prototypes_and_concat():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([5, 5, 2])
    p = compute_prototypes(lambda a: a, x, y, [5, 2])
    assert torch.allclose(p, torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    with pytest.raises(ValueError, match="no samples"):
        compute_prototypes(lambda a: a, x, y, [9])
    a = PrototypeHead.from_prototypes(torch.tensor([[1.0, 0.0]]), [7])
    b = PrototypeHead.from_prototypes(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), [4, 2])
    c = concat_heads([a, b])
    assert c.classes == [2, 4, 7]
    assert torch.equal(c.weight[0], b.weight[1]) and torch.equal(c.bias[2], a.bias[0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="unique"):
        PrototypeHead([1, 1], 3)
    with pytest.raises(ValueError, match="norm"):
        PrototypeHead([1], 3, norm="l1")
    head = PrototypeHead([0, 1], 3)
    with pytest.raises(ValueError, match="features must be"):
        head(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        head.set_prototypes(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="prototypes must be"):
        PrototypeHead.from_prototypes(torch.zeros(3, 3), [0, 1])
