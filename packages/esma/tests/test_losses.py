import pytest
import torch

from esma import esma_matching_loss, pretrain_target_embeddings, stage1_loss, structure_loss
from esma.pretrain import cosine_matrix, distance_matrix, symmetric_kl_matrix


def test_matching_loss_hand_value():
    logits = torch.tensor([[0.0, 3.0], [1.0, 1.0], [5.0, 5.0]])
    anchors = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
    tgt = torch.tensor([0, 1, 0])
    src = torch.tensor([1, 1, -1])  # row 1 masked (source == target)
    # row 0: d = (-0.5, 2) -> 0.125 + 1.5 ; row 2: d = (4.5, 4) -> 4.0 + 3.5
    expected = (0.125 + 1.5 + 4.0 + 3.5) / 3
    assert esma_matching_loss(logits, anchors, tgt, src).item() == pytest.approx(expected)
    # beta changes the transition point: SmoothL1_beta(d) = 0.5 d^2 / beta if |d| < beta
    assert esma_matching_loss(logits[:1], anchors, tgt[:1], beta=4.0).item() == pytest.approx(
        0.5 * 0.25 / 4 + 0.5 * 4 / 4
    )


def test_matching_loss_zero_at_anchor_and_masked_rows():
    anchors = torch.randn(3, 7)
    tgt = torch.tensor([2, 0, 1])
    assert esma_matching_loss(anchors[tgt], anchors, tgt).item() == 0.0
    far = anchors[tgt] + 10
    assert esma_matching_loss(far, anchors, tgt, source_idx=tgt).item() == 0.0


def test_matching_loss_bad_input():
    with pytest.raises(ValueError, match="share C"):
        esma_matching_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        esma_matching_loss(torch.tensor([[float("nan"), 0.0]]), torch.zeros(2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="target_idx"):
        esma_matching_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0]))


def test_matrices_hand_values():
    z = torch.tensor([[3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
    d = distance_matrix(z)
    assert torch.allclose(d, torch.tensor([[0.0, 5.0, 4.0], [5.0, 0.0, 3.0], [4.0, 3.0, 0.0]]), atol=1e-5)
    c = cosine_matrix(z)
    assert torch.allclose(c[0], torch.tensor([1.0, 0.0, 0.6]), atol=1e-6)


def test_symmetric_kl_matrix_hand_value():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, torch.log(torch.tensor(3.0))], [0.0, 0.0]])
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.25, 0.75])
    row0 = (q * (q / p).log()).sum() + (p * (p / q).log()).sum()
    assert symmetric_kl_matrix(a, b).item() == pytest.approx(row0.item() / 4, rel=1e-5)  # mean over 4 entries


def test_structure_loss_nonneg_and_zero_when_identical():
    torch.manual_seed(0)
    f = torch.randn(5, 12)
    assert structure_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert structure_loss(f, torch.randn(5, 8)).item() > 0
    with pytest.raises(ValueError, match="rows"):
        structure_loss(f, torch.randn(4, 8))
    with pytest.raises(ValueError, match="NaN"):
        structure_loss(f, torch.full((5, 3), float("nan")))


def test_distance_gradient_finite_at_zero_diagonal():
    z = torch.randn(4, 6, requires_grad=True)
    structure_loss(torch.randn(4, 9), z).backward()
    assert torch.isfinite(z.grad).all()


def test_pretraining_reduces_loss_and_touches_only_conditioning(tiny_gen):
    torch.manual_seed(0)
    feats = torch.randn(4, 10) * 3
    before = {n: p.detach().clone() for n, p in tiny_gen.named_parameters()}
    cond = {id(p) for p in tiny_gen.conditioning_parameters()}
    l0 = stage1_loss(tiny_gen, feats).item()
    hist = pretrain_target_embeddings(tiny_gen, feats, steps=40, lr=3e-3)
    assert len(hist) == 40 and hist[-1] < l0
    for n, p in tiny_gen.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (id(p) in cond) or (id(p) in cond and p.numel() == 0), n
    assert all(p.requires_grad for p in tiny_gen.parameters())


def test_accumulated_gradients_differ_from_clean(tiny_gen):
    import copy

    feats = torch.randn(4, 10)
    g2 = copy.deepcopy(tiny_gen)
    pretrain_target_embeddings(tiny_gen, feats, steps=5, lr=1e-3, accumulate_grads=False)
    pretrain_target_embeddings(g2, feats, steps=5, lr=1e-3, accumulate_grads=True)
    w1 = tiny_gen.target_embedding.embedding.weight
    w2 = g2.target_embedding.embedding.weight
    assert not torch.allclose(w1, w2)
    with pytest.raises(ValueError, match="targets"):
        pretrain_target_embeddings(tiny_gen, torch.randn(3, 10), steps=1)
