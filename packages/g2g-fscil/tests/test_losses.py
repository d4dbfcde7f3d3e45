import math

import pytest
import torch
import torch.nn.functional as F

from g2g_fscil.baselines.v2v import nudging_loss
from g2g_fscil.cag2g import cag2g_loss
from g2g_fscil.graphs import collapse_index, cosine_adjacency, represent
from g2g_fscil.lgp import backbone_graph, lgp_loss
from g2g_fscil.losses import cosine_align_loss, episode_bce_loss


def test_lgp_zero_for_isometry_positive_for_collapse():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, 5, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 5, generator=g))  # orthonormal columns, d=8 >= D=5
    z = f @ q.T  # bias-free isometry, rho = identity
    assert float(lgp_loss(f, z, mode="preserve")) == pytest.approx(0.0, abs=1e-10)
    # centred: the isometry of the batch-centred features matches exactly
    zc = (f - f.mean((0, 1), keepdim=True)) @ q.T
    assert float(lgp_loss(f, zc, mode="centred")) == pytest.approx(0.0, abs=1e-10)
    collapsed = torch.ones(3, 4, 8)
    for mode in ("centred", "preserve", "image_centred"):
        assert float(lgp_loss(f, collapsed, mode=mode)) > 0.05
    assert float(lgp_loss(f, collapsed, mode="anti_collapse", margin=0.5)) == pytest.approx(0.5, abs=1e-6)


def test_backbone_graph_centring_hand_values():
    """centred removes the batch-mean feature, image_centred each image's mean (zero-sum target)."""
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[3.0, 0.0], [0.0, 3.0], [3.0, 3.0]]])
    mu = f.mean((0, 1))  # (4/3, 4/3)
    ref = cosine_adjacency(f - mu)
    torch.testing.assert_close(backbone_graph(f, "centred"), ref)
    torch.testing.assert_close(backbone_graph(f, "centred", mean=torch.zeros(2)), cosine_adjacency(f))
    torch.testing.assert_close(backbone_graph(f, "preserve"), cosine_adjacency(f))
    img = backbone_graph(f, "image_centred")
    torch.testing.assert_close(img, cosine_adjacency(f - f.mean(1, keepdim=True)))
    # post-ReLU-like features: raw cosines are high, the image-centred target has mean -1/(M-1) for
    # equal-norm residuals (here M = 3: each residual pair of an equilateral layout has cosine -1/2)
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(64, 4, 16, generator=g) + 0.5
    assert collapse_index(backbone_graph(pos, "preserve")) > 0.8
    assert collapse_index(backbone_graph(pos, "centred")) < 0.1
    tri = torch.tensor([[[1.0, 0.0], [-0.5, 3**0.5 / 2], [-0.5, -(3**0.5) / 2]]]) + 5.0
    assert collapse_index(backbone_graph(tri, "image_centred")) == pytest.approx(-0.5, abs=1e-6)
    with pytest.raises(ValueError, match="backbone_graph mode"):
        backbone_graph(f, "anti_collapse")


def test_lgp_backbone_gradient_detached():
    f = torch.randn(2, 4, 5, requires_grad=True)
    w = torch.randn(6, 5, requires_grad=True)
    z = torch.tanh(f @ w.T)
    lgp_loss(f, z, mode="preserve", detach_backbone=True).backward()
    # the gradient reaching f only comes through z (the B term is detached): compare with a z-only path
    g_with = f.grad.clone()
    f2 = f.detach().clone().requires_grad_(True)
    z2 = torch.tanh(f2 @ w.detach().T)
    b = cosine_adjacency(f2.detach())
    a = cosine_adjacency(z2)
    m = 4
    ((a - b).pow(2).sum() / (2 * m * (m - 1))).backward()
    torch.testing.assert_close(g_with, f2.grad)
    # with a fixed projection z, the backbone gets no gradient from LGP at all
    f3 = torch.randn(2, 4, 5, requires_grad=True)
    z3 = torch.randn(2, 4, 6, requires_grad=True)
    lgp_loss(f3, z3, detach_backbone=True).backward()
    assert f3.grad is None
    lgp_loss(f3, z3.detach(), detach_backbone=False).backward()
    assert f3.grad is not None and f3.grad.abs().sum() > 0


def _supcon_ref(x, labels, tau):
    xn = F.normalize(x, dim=1)
    s = xn @ xn.T / tau
    n = x.shape[0]
    total, cnt = 0.0, 0
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(s[i, k]) for k in range(n) if k != i)
        total += -sum(s[i, p].item() - math.log(denom) for p in pos) / len(pos)
        cnt += 1
    return total / cnt


def test_cag2g_equals_supcon_when_m1_alpha1():
    """alpha = 1, M = 1 -> SupCon (Khosla et al. 2020, Eq. 2) on cosine similarities."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    z = x[:, None]
    loss = cag2g_loss(z, cosine_adjacency(z), labels, tau=0.5, alpha=1.0)
    assert float(loss) == pytest.approx(_supcon_ref(x, labels, 0.5), rel=1e-5)


def test_cag2g_singletons_finite_and_decreases_when_identical():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # 2 and 3 are singletons
    loss = cag2g_loss(z, cosine_adjacency(z), labels)
    assert torch.isfinite(loss)
    z2 = z.clone()
    z2[1], z2[3] = z2[0], z2[2]
    assert float(cag2g_loss(z2, cosine_adjacency(z2), labels)) < float(loss)
    only_single = cag2g_loss(z, cosine_adjacency(z), torch.arange(6))
    assert float(only_single) == 0.0


def test_cag2g_gradient_flows():
    z = torch.randn(4, 4, 3, requires_grad=True)
    loss = cag2g_loss(z, cosine_adjacency(z), torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_bce_and_align_and_nudging_hand_values():
    w = torch.tensor([[0.75, 0.25]])
    ref = -(math.log(0.75) + math.log(0.75)) / 2
    assert float(episode_bce_loss(w, torch.tensor([0]))) == pytest.approx(ref, rel=1e-5)
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert float(cosine_align_loss(a, a)) == pytest.approx(-1.0)
    assert float(cosine_align_loss(a, b)) == pytest.approx(0.0, abs=1e-7)
    # orthogonal prototypes, no deviation: pair term exp(0)+exp(0)-2 = 0
    p = torch.eye(2)
    assert float(nudging_loss(p, p)) == pytest.approx(0.0, abs=1e-6)
    p2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(nudging_loss(p2, p2)) == pytest.approx(math.exp(4) + math.exp(-4) - 2, rel=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="expected w"):
        episode_bce_loss(torch.rand(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expected f"):
        lgp_loss(torch.randn(2, 4, 3), torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="lgp mode"):
        lgp_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 3), mode="x")
    with pytest.raises(ValueError, match="labels"):
        cag2g_loss(torch.randn(3, 2, 2), torch.randn(3, 2, 2), torch.tensor([0, 1]))
    assert represent(torch.tensor([-2.0, 0.5]), "bipolar").tolist() == [-1.0, 1.0]
