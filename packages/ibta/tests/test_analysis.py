"""MINE analysis helpers, the IBTA-code ensemble (NormalizedLogitEnsemble) and the ablation sweep."""

import pytest
import torch

from ibta import IBTA_MIFGSM, base_attack
from ibta.analysis import collect_pairs, perturbation_input_mi, sweep
from papers_shared.attacks import NormalizedLogitEnsemble, tiny_cnn


def test_collect_pairs_delta_x_and_logits(model, batch):
    x, y = batch
    loader = [(x[:2], y[:2]), (x[2:], y[2:])]
    atk = IBTA_MIFGSM(model, steps=2, seed=0)
    a, b = collect_pairs(atk, model, loader, pool=4)
    assert a.shape == (4, 48) and b.shape == (4, 48)
    adv = torch.cat([atk(x[:2], y[:2]), atk(x[2:], y[2:])])
    assert torch.allclose(a, torch.nn.functional.adaptive_avg_pool2d(adv - x, 4).flatten(1), atol=1e-7)
    la, lb = collect_pairs(atk, model, loader, variables="logits")
    assert la.shape == (4, 10) and torch.allclose(lb, model(x), atol=1e-6)
    with pytest.raises(ValueError, match="variables"):
        collect_pairs(atk, model, loader, variables="grads")
    with pytest.raises(ValueError, match="no batches"):
        collect_pairs(atk, model, [])


def test_perturbation_input_mi_runs(model, batch):
    x, y = batch
    x = x.repeat(4, 1, 1, 1)
    y = y.repeat(4)
    est = perturbation_input_mi(
        base_attack("mi", model, steps=1), model, [(x, y)], pool=2, steps=10, hidden=8
    )
    assert len(est.history) == 2 and est.value == pytest.approx(sum(est.history) / 2)


def test_sweep_rows():
    rows = sweep(lambda lam: lam, {"lam": [0.0, 1.0]}, lambda atk: {"twice": 2 * atk})
    assert rows == [
        {"param": "lam", "value": 0.0, "twice": 0.0},
        {"param": "lam", "value": 1.0, "twice": 2.0},
    ]


def test_normalized_logit_ensemble_hand_formula_and_detached_norms():
    members = [tiny_cnn(5, width=4, seed=s).eval() for s in (0, 1)]
    ens = NormalizedLogitEnsemble(members)
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    zs = [m(x) for m in members]
    norms = [z.norm(dim=1, keepdim=True) for z in zs]
    want = (zs[0] / norms[0] + zs[1] / norms[1]) / 2 * (norms[0] + norms[1]) / 2
    out = ens(x)
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.allclose(NormalizedLogitEnsemble([members[0], members[0]])(x), zs[0], atol=1e-6)
    (g,) = torch.autograd.grad(out.sum(), x)
    const = [n.detach() for n in norms]
    ref = (zs[0] / const[0] + zs[1] / const[1]) / 2 * (const[0] + const[1]) / 2
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-6)
