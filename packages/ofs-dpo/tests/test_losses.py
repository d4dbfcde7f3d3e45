"""Pure loss functions (the paper's Eq. 3-6 and DPO's loss, checked on tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ofs_dpo.losses import (
    chase_loss,
    dpo_grad_weight,
    dpo_loss,
    dpo_margins,
    normalise_weights,
    ofs_objectives,
    preference_loss,
    sequence_logps,
    token_logps_to_sequence,
    weights_on_simplex,
)


def test_chase_loss_is_log2_at_parity_and_reference_cancels():
    torch.manual_seed(0)
    pol_l, pol_c, ref = torch.randn(8), torch.randn(8), torch.randn(8)
    h = dpo_margins(pol_l, ref, beta=0.3)
    assert chase_loss(h, h.clone()).item() == pytest.approx(math.log(2), abs=1e-7)
    # Adding any per-sequence constant to the reference log-probs shifts h_L and h_C equally.
    shift = torch.randn(8) * 5
    before = chase_loss(dpo_margins(pol_l, ref, 0.3), dpo_margins(pol_c, ref, 0.3))
    after = chase_loss(dpo_margins(pol_l, ref + shift, 0.3), dpo_margins(pol_c, ref + shift, 0.3))
    assert after.item() == pytest.approx(before.item(), abs=1e-6)
    # ...while the DPO loss itself does depend on the reference.
    assert dpo_loss(dpo_margins(pol_l, ref + shift, 0.3)).item() != pytest.approx(
        dpo_loss(dpo_margins(pol_l, ref, 0.3)).item(), abs=1e-4
    )


def test_dpo_margins_hand_computed():
    pol = torch.tensor([-1.0, -2.0, -3.0, -1.0])  # chosen: -1, -2 ; rejected: -3, -1
    ref = torch.tensor([-1.5, -2.0, -2.0, -1.0])
    h = dpo_margins(pol, ref, beta=0.5)
    # pair 0: 0.5*((-1+1.5) - (-3+2)) = 0.5*(0.5+1) = 0.75 ; pair 1: 0.5*(0 - 0) = 0
    assert torch.allclose(h, torch.tensor([0.75, 0.0]))
    assert dpo_loss(h).item() == pytest.approx((-F.logsigmoid(torch.tensor(0.75)) + math.log(2)).item() / 2)


def test_gradient_vanishing_of_dpo_but_not_of_chase():
    """Prop. 3.3.1 illustration (ours)."""
    grads = []
    for hv in (0.0, 2.0, 5.0, 10.0):
        h = torch.tensor([hv], requires_grad=True)
        dpo_loss(h).backward()
        grads.append(abs(h.grad.item()))
        assert grads[-1] == pytest.approx(torch.sigmoid(torch.tensor(-hv)).item(), rel=1e-5)
        assert dpo_grad_weight(torch.tensor([hv])).item() == pytest.approx(grads[-1], rel=1e-5)
    assert all(a > b for a, b in zip(grads, grads[1:]))
    assert grads[-1] < 1e-4
    # Chase term at parity Δ = 0 keeps weight 0.5 whatever the absolute margin.
    for hv in (0.0, 10.0):
        h_l = torch.tensor([hv], requires_grad=True)
        chase_loss(h_l, torch.tensor([hv])).backward()
        assert abs(h_l.grad.item()) == pytest.approx(0.5, abs=1e-7)


@pytest.mark.parametrize("leader", ["fast", "slow"])
@pytest.mark.parametrize("mode", ["minmax", "pull"])
def test_stop_gradient_routing(leader, mode):
    """Leader margins get ∂J_L only, chaser margins ∂J_C only (the paper's Eq. 3-4)."""
    torch.manual_seed(1)
    hf0, hs0 = torch.randn(6), torch.randn(6)

    def grads(which):
        hf, hs = hf0.clone().requires_grad_(), hs0.clone().requires_grad_()
        obj = ofs_objectives(hf, hs, alpha=0.7, leader=leader, mode=mode)
        getattr(obj, which).backward()
        return hf.grad if hf.grad is not None else torch.zeros(
            6
        ), hs.grad if hs.grad is not None else torch.zeros(6)

    tf, ts = grads("total")
    lf, ls = grads("leader_objective")
    cf, cs = grads("chaser_objective")
    lead_total, chase_total = (tf, ts) if leader == "fast" else (ts, tf)
    lead_only, chase_zero = (lf, ls) if leader == "fast" else (ls, lf)
    chase_only, lead_zero = (cs, cf) if leader == "fast" else (cf, cs)
    assert torch.equal(lead_total, lead_only)
    assert torch.equal(chase_total, chase_only)
    assert torch.count_nonzero(chase_zero) == 0 and torch.count_nonzero(lead_zero) == 0


def test_chaser_gradient_weights_minmax_vs_pull():
    h_l, h_c0 = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -1.0])
    delta = h_l - h_c0
    for mode, expected in (("minmax", torch.sigmoid(-delta)), ("pull", torch.sigmoid(delta))):
        h_c = h_c0.clone().requires_grad_()
        obj = ofs_objectives(h_l, h_c, alpha=1.0, leader="fast", mode=mode)
        (obj.chaser_objective - dpo_loss(h_c)).backward()
        # d(chase part)/dh_C = −weight / B (descent raises h_C)
        assert torch.allclose(-h_c.grad * 2, expected, atol=1e-6)


def test_sign_of_one_step():
    """One gradient step on J_C raises h_C; one on J_L raises h_L − h_C (tensor form)."""
    h_f, h_s = torch.tensor([0.2, -0.1], requires_grad=True), torch.tensor([0.0, 0.3], requires_grad=True)
    obj = ofs_objectives(h_f, h_s, alpha=1.0, leader="fast")
    obj.chaser_objective.backward()
    assert torch.all(-h_s.grad > 0)
    h_f2 = torch.tensor([0.2, -0.1], requires_grad=True)
    obj = ofs_objectives(h_f2, h_s.detach(), alpha=1.0, leader="fast")
    obj.leader_objective.backward()
    assert torch.all(-h_f2.grad > 0)


def test_objective_values_and_metrics():
    h_f, h_s = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0])
    obj = ofs_objectives(h_f, h_s, alpha=0.5, leader="fast")
    chase = -F.logsigmoid(h_f - h_s).mean()
    assert obj.chase.item() == pytest.approx(chase.item())
    assert obj.leader_objective.item() == pytest.approx((dpo_loss(h_f) + 0.5 * chase).item())
    assert obj.chaser_objective.item() == pytest.approx((dpo_loss(h_s) - 0.5 * chase).item())
    assert torch.allclose(obj.margin_gap, torch.tensor([1.0, 0.0]))
    assert torch.allclose(obj.grad_weight_chase, torch.sigmoid(-torch.tensor([1.0, 0.0])))
    assert torch.allclose(obj.grad_weight_dpo, torch.sigmoid(-h_f))


def test_clamp_bounds_the_chase_term():
    h_l, h_c = torch.tensor([50.0]), torch.tensor([-50.0])
    assert chase_loss(h_c, h_l, clamp=10.0).item() == pytest.approx(-F.logsigmoid(torch.tensor(-10.0)).item())
    with pytest.raises(ValueError, match="clamp"):
        chase_loss(h_l, h_c, clamp=0.0)


def test_sequence_logps_matches_manual_and_masks_prompt():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    out = sequence_logps(logits, ids, mask)
    lp = torch.log_softmax(logits, -1)
    expected0 = sum(lp[0, t - 1, ids[0, t]] for t in (2, 3, 4))
    expected1 = sum(lp[1, t - 1, ids[1, t]] for t in (1, 2))
    assert torch.allclose(out, torch.stack([expected0, expected1]), atol=1e-6)


def test_ld_alpha_weights_the_tail():
    per_tok = torch.ones(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # chosen 4 tokens, rejected 2
    out = token_logps_to_sequence(per_tok, mask, ld_alpha=0.5)
    assert torch.allclose(out, torch.tensor([2 + 0.5 * 2, 2.0]))
    assert torch.allclose(token_logps_to_sequence(per_tok, mask), torch.tensor([4.0, 2.0]))


def test_preference_loss_types():
    c, r = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.5])
    assert torch.allclose(preference_loss(c, r, 0.1), -F.logsigmoid(0.1 * (c - r)))
    assert torch.allclose(preference_loss(c, r, 0.1, "hinge"), torch.relu(1 - 0.1 * (c - r)))
    lens = torch.tensor([2.0, 4.0])
    ipo = preference_loss(c, r, 0.1, "ipo", chosen_lengths=lens, rejected_lengths=lens)
    assert torch.allclose(ipo, ((c - r) / lens - 5.0) ** 2)
    rob = preference_loss(c, r, 0.1, "robust", label_smoothing=0.0)
    assert torch.allclose(rob, -F.logsigmoid(0.1 * (c - r)))
    with pytest.raises(ValueError, match="not supported"):
        preference_loss(c, r, 0.1, "kto")
    with pytest.raises(ValueError, match="lengths"):
        preference_loss(c, r, 0.1, "ipo")


def test_bad_inputs_raise_clear_errors():
    h = torch.zeros(4)
    with pytest.raises(ValueError, match="same shape"):
        chase_loss(h, torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        dpo_loss(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or inf"):
        dpo_loss(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN or inf"):
        ofs_objectives(torch.tensor([float("inf")]), torch.zeros(1), alpha=1.0)
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="even length"):
        dpo_margins(torch.zeros(3), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_margins(torch.zeros(4), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="leader"):
        ofs_objectives(h, h, alpha=1.0, leader="middle")
    with pytest.raises(ValueError, match="chase mode"):
        ofs_objectives(h, h, alpha=1.0, mode="push")
    with pytest.raises(ValueError, match="alpha"):
        ofs_objectives(h, h, alpha=-1.0)
    with pytest.raises(ValueError, match="match"):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="integer"):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 5), torch.zeros(2, 5))


def test_simplex_grid_and_weight_normalisation():
    assert len(weights_on_simplex(2, 0.1)) == 11
    assert len(weights_on_simplex(3, 0.1)) == 66
    assert all(abs(sum(w) - 1) < 1e-9 for w in weights_on_simplex(3, 0.25))
    with pytest.raises(ValueError, match="divide"):
        weights_on_simplex(2, 0.3)
    assert normalise_weights([1, 3]) == [0.25, 0.75]
    for bad in ([], [-1, 2], [0, 0], [float("nan"), 1]):
        with pytest.raises(ValueError):
            normalise_weights(bad)
