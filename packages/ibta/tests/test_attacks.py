"""The IBTA attacks on a tiny CNN: reductions to the baselines, the IB gradient, budgets, RNG use, variants."""

import pytest
import torch
import torch.nn.functional as F

import ibta.attacks as A
from ibta import BASES, IBTA_MIFGSM, IBTA_LogitTI, IBTA_RAPLogitTI, IBTAAttack, base_attack, ib_objective
from papers_shared.attacks import MIFGSM, TIFGSM, IterativeAttack, dct_2d, idct_2d

FAST = dict(ssa_n=2, rap_late_start=1)


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


class Scaled(torch.nn.Module):
    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.scale * self.net(x)


@pytest.mark.parametrize("base", BASES)
def test_factory_returns_preset_subclassing_shared_base(model, base):
    atk = IBTAAttack(model, base=base)
    assert isinstance(atk, IBTAAttack) and isinstance(atk, IterativeAttack)
    assert type(atk).base == base
    assert atk.steps == {"mi": 20, "di": 20, "ti": 20, "s2i": 20, "logit_ti": 300, "rap_logit_ti": 400}[base]
    assert atk.eps == pytest.approx(16 / 255) and atk.alpha == pytest.approx(1.25 / 255)
    assert (atk.sigma, atk.gamma, atk.lam) == (0.1, 0.1, 0.1)
    assert atk.clip_delta is False and atk.random_start is False


@pytest.mark.parametrize("base", BASES)
def test_lam_gamma_zero_is_bitwise_the_shared_baseline_and_skips_noisy_branch(model, batch, base):
    x, y = batch
    cm_a, cm_b = Counting(model), Counting(model)
    a = IBTAAttack(cm_a, base=base, steps=3, lam=0.0, gamma=0.0, seed=7, **FAST)
    b = base_attack(base, cm_b, steps=3, seed=7, **FAST)
    for targeted in (False, True):
        a.targeted = b.targeted = targeted
        assert torch.equal(a(x, y), b(x, y))
    assert cm_a.calls == cm_b.calls
    ib = IBTAAttack(Counting(model), base=base, steps=3, seed=7, **FAST)
    ib(x, y)
    # the IB variant runs the noisy branch: one extra forward per objective evaluation
    assert ib.model.calls == cm_b.calls // 2 + len(ib.last_stats)


def test_reduction_to_mifgsm_with_zero_noise(model, batch):
    # sigma = 0 => x~ = x, the divergence and its gradient vanish, the loss terms rescale g by (1+gamma)
    x, y = batch
    for targeted in (False, True):
        a = IBTA_MIFGSM(model, sigma=0.0, steps=5, targeted=targeted, seed=0)
        b = MIFGSM(model, eps=16 / 255, alpha=1.25 / 255, steps=5, targeted=targeted, clip_delta=False)
        assert torch.allclose(a(x, y), b(x, y), atol=1e-6)


@pytest.mark.parametrize("base", ["ti", "logit_ti", "rap_logit_ti"])
def test_reduction_to_the_baseline_without_noise_or_di(model, batch, base):
    # the same reduction for the TI-smoothed variants, RAP-Logit-TI included (its inner step uses the
    # base objective only, so it is unchanged)
    x, y = batch
    for targeted in (False, True):
        kw = dict(steps=5, diversity_prob=0.0, targeted=targeted, rap_late_start=2, seed=0)
        a = IBTAAttack(model, base=base, sigma=0.0, **kw)
        b = base_attack(base, model, **kw)
        assert torch.allclose(a(x, y), b(x, y), atol=1e-6)
        if base == "ti":
            c = TIFGSM(model, 16 / 255, 1.25 / 255, 5, targeted, diversity_prob=0.0, clip_delta=False)
            assert torch.allclose(a(x, y), c(x, y), atol=1e-6)


@pytest.mark.parametrize("base", ["di", "ti", "s2i", "logit_ti", "rap_logit_ti"])
def test_shared_transform_gives_both_branches_one_di_draw(model, batch, base):
    # with x~ = x and one DI draw per step for both branches, the two branches see the same image, so the
    # divergence vanishes at every objective evaluation (S2I: up to the rounding of (x + delta) - x);
    # independent draws make it clearly positive
    x, y = batch
    sharp = Scaled(model, 30.0)  # peaked predictions, so that different views differ measurably
    kw = dict(sigma=0.0, steps=4, diversity_prob=1.0, rap_late_start=2, seed=3, **{"ssa_n": 2})
    shared = IBTAAttack(sharp, base=base, shared_transform=True, **kw)
    shared(x, y)
    assert max(abs(s["divergence"]) for s in shared.last_stats) < 1e-6
    independent = IBTAAttack(sharp, base=base, **kw)
    independent(x, y)
    assert max(s["divergence"] for s in independent.last_stats) > 1e-4
    # the clean branch's draws are those of the independent run: same first objective value
    assert shared.last_stats[0]["loss"] == independent.last_stats[0]["loss"]


def test_shared_transform_is_a_no_op_without_di(model, batch):
    x, y = batch
    a = IBTAAttack(model, base="mi", steps=3, seed=0, shared_transform=True)(x, y)
    b = IBTAAttack(model, base="mi", steps=3, seed=0)(x, y)
    assert torch.equal(a, b)


def test_shared_transform_without_a_seed_uses_the_global_rng(model, batch):
    x, y = batch
    torch.manual_seed(0)
    atk = IBTAAttack(
        Scaled(model, 30.0), base="di", sigma=0.0, steps=3, diversity_prob=1.0, shared_transform=True
    )
    atk(x, y)
    assert all(s["divergence"] == 0.0 for s in atk.last_stats)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("targeted", [False, True])
def test_budget_box_shape_and_inputs_untouched(model, batch, base, targeted):
    x, y = batch
    x0, y0 = x.clone(), y.clone()
    atk = IBTAAttack(model, base=base, steps=4, targeted=targeted, seed=1, **FAST)
    adv = atk(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert float((adv - x).abs().max()) <= atk.eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not adv.requires_grad
    assert all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in atk.last_stats)


def test_float64_images_keep_dtype(model, batch):
    x, y = batch
    adv = IBTA_MIFGSM(model.double(), steps=2)(x.double(), y)
    assert adv.dtype == torch.float64


def test_noisy_companion_drawn_once_per_call(model, batch, monkeypatch):
    x, y = batch
    drawn = []
    original = A.noisy_companion

    def spy(x_, sigma, generator=None):
        out = original(x_, sigma, generator)
        drawn.append(out)
        return out

    monkeypatch.setattr(A, "noisy_companion", spy)
    atk = IBTAAttack(model, base="di", steps=6, seed=0)
    atk(x, y)
    assert len(drawn) == 1
    assert float(drawn[0].min()) >= 0 and float(drawn[0].max()) <= 1
    atk(x, y)
    assert len(drawn) == 2
    IBTAAttack(model, base="di", steps=6, lam=0, gamma=0)(x, y)
    assert len(drawn) == 2  # no draw when the noisy branch is off


def test_gradient_hook_equals_manual_ib_gradient(model, batch):
    # the gradient that reaches delta is the gradient of the IB objective J through both branches
    x, y = batch
    atk = IBTA_MIFGSM(model, steps=1, gamma=0.4, lam=0.9, seed=3)
    captured = {}
    orig = atk.grad_transform

    def capture(g):
        captured["g"] = g.clone()
        return orig(g)

    atk.grad_transform = capture
    atk(x, y)
    x_tilde = A.noisy_companion(x, 0.1, torch.Generator().manual_seed(3))
    delta = torch.zeros_like(x, requires_grad=True)
    z = model(torch.clamp(x + delta, 0, 1))
    zt = model(torch.clamp(x_tilde + delta, 0, 1))
    (g,) = torch.autograd.grad(ib_objective(z, zt, y, False, gamma=0.4, lam=0.9), delta)
    assert torch.allclose(captured["g"], g, atol=1e-6)
    # the noisy branch contributes: the gradient differs from the clean-branch-only gradient
    (g0,) = torch.autograd.grad(F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y), delta)
    assert float((g - g0).abs().max()) > 0.05 * float(g0.abs().max())


@pytest.mark.parametrize("targeted", [True, False])
def test_one_step_moves_the_attack_loss_the_right_way(model, batch, targeted):
    x, y = batch
    labels = (y + 1) % 10 if targeted else y
    atk = IBTA_MIFGSM(model, steps=1, alpha=4 / 255, targeted=targeted, seed=0)
    adv = atk(x, labels)
    with torch.no_grad():
        before = F.cross_entropy(model(x), labels)
        after = F.cross_entropy(model(adv), labels)
    assert (after < before) if targeted else (after > before)


def test_rap_equals_logit_ti_before_late_start(model, batch):
    x, y = batch
    a = IBTA_RAPLogitTI(model, steps=4, rap_late_start=4, seed=2)
    b = IBTA_LogitTI(model, steps=4, seed=2)
    assert torch.equal(a(x, y), b(x, y))


def test_rap_reverse_perturbation_bounded_by_alpha(model, batch):
    x, y = batch
    atk = IBTA_RAPLogitTI(model, steps=4, rap_late_start=2, seed=2)
    seen = []
    orig = atk.reverse_perturbation

    def spy(*args):
        n = orig(*args)
        seen.append(n)
        return n

    atk.reverse_perturbation = spy
    atk(x, y)
    assert len(seen) == 2  # steps 2 and 3
    for n in seen:
        assert float(n.abs().max()) <= atk.alpha + 1e-7
        assert float(n.abs().max()) > 0


def test_rap_baseline_is_the_ibta_code_setting(model):
    from ibta.baselines import RAPIBTA, RAPLogitTI

    atk = RAPLogitTI(model)
    assert RAPIBTA is RAPLogitTI
    assert (atk.steps, atk.late_start, atk.inner_steps, atk.alpha_n) == (400, 100, 1, atk.alpha)
    assert atk.alpha == pytest.approx(1.25 / 255) and atk.eps_n == pytest.approx(12 / 255)
    assert atk.loss_name == "logit" and atk.di and atk.ti and atk.mi and not atk.clip_delta


def test_dct_roundtrip():
    x = torch.rand(2, 3, 16, 16)
    assert float((idct_2d(dct_2d(x)) - x).abs().max()) < 1e-5


def test_s2i_reduces_to_mi_without_spectrum_randomness(model, inner_batch):
    # rho = 0, zero spectrum noise, no DI => N identical copies, the MI direction
    x, y = inner_batch
    for kw in (dict(lam=0.0, gamma=0.0), dict(sigma=0.0)):
        s2i = IBTAAttack(
            model, base="s2i", ssa_rho=0.0, ssa_sigma=0.0, diversity_prob=0.0, ssa_n=3, steps=4, **kw
        )
        mi = IBTAAttack(model, base="mi", steps=4, **kw)
        assert torch.allclose(s2i(x, y), mi(x, y), atol=1e-6)


def test_s2i_noisy_branch_reuses_the_spectrum_draw(model, batch, monkeypatch):
    x, y = batch
    calls = []
    orig = A.spectrum_transform

    def spy(inp, rho, sigma, generator=None, noise=None, mask=None):
        calls.append((noise, mask))
        return orig(inp, rho, sigma, generator, noise=noise, mask=mask)

    monkeypatch.setattr(A, "spectrum_transform", spy)
    IBTAAttack(model, base="s2i", ssa_n=2, steps=1, seed=0)(x, y)
    assert len(calls) == 4  # 2 passes x (clean, noisy)
    for k in (0, 2):
        assert calls[k][0] is calls[k + 1][0] and calls[k][1] is calls[k + 1][1]
    assert not torch.equal(calls[0][0], calls[2][0])


def test_s2i_modes_and_sigma_defaults(model):
    a = IBTAAttack(model, base="s2i")
    assert a.ssa_mode == "ibta_code" and a.sigma_spec == pytest.approx(0.1 / 255) and a.sigma == 0.1
    assert a.normalize_per_pass and not a.normalize_grad and a.di and a.passes == 20
    b = IBTAAttack(model, base="s2i", ssa_mode="ssa_paper")
    assert b.sigma_spec == pytest.approx(16 / 255)


def test_seed_makes_calls_repeatable_and_seeds_differ(model, batch):
    x, y = batch
    a = IBTAAttack(model, base="di", steps=3, seed=5)
    assert torch.equal(a(x, y), a(x, y))
    b = IBTAAttack(model, base="di", steps=3, seed=6)
    assert not torch.equal(a(x, y), b(x, y))


def test_clear_errors(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="base"):
        IBTAAttack(model, base="fgsm")
    with pytest.raises(ValueError, match="base"):
        IBTAAttack(model)
    with pytest.raises(ValueError, match="variant"):
        IBTA_MIFGSM(model, base="di")
    with pytest.raises(ValueError, match="lam"):
        IBTA_MIFGSM(model, lam=-0.1)
    with pytest.raises(ValueError, match="ssa_mode"):
        IBTAAttack(model, base="s2i", ssa_mode="fft")
    atk = IBTA_MIFGSM(model, steps=1)
    with pytest.raises(ValueError, match="NaN"):
        atk(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(x * 3, y)
    with pytest.raises(ValueError, match="shape"):
        atk(x[0], y)
    with pytest.raises(ValueError, match="labels"):
        atk(x, y[:2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("base", BASES)
def test_cuda_device_preserved(batch, base):
    from papers_shared.attacks import tiny_cnn

    m = tiny_cnn(10, width=8, seed=0).cuda().eval()
    x, y = (t.cuda() for t in batch)
    atk = IBTAAttack(m, base=base, steps=3, seed=0, generator=None, **FAST)
    adv = atk(x, y)
    assert adv.device == x.device and float((adv - x).abs().max()) <= atk.eps + 1e-6


@pytest.mark.parametrize("base", ["mi", "di", "ti", "logit_ti", "s2i", "rap_logit_ti"])
def test_fused_branches_match_two_passes(model, batch, base):
    x, y = batch
    cm = Counting(model)
    a = IBTAAttack(model, base=base, steps=3, seed=4, **FAST)
    b = IBTAAttack(cm, base=base, steps=3, seed=4, fuse_branches=True, **FAST)
    assert torch.allclose(a(x, y), b(x, y), atol=1e-6)
    if base in ("mi", "di", "ti", "logit_ti"):
        assert cm.calls == 3  # one forward of 2B per step
        assert len(b.last_stats) == 3
