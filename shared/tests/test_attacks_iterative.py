"""Tests of the iterative attacks: the engine's hook loop, every preset, the registry, attack behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from papers_shared import attacks as A
from papers_shared.attacks import ops


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the thread
    hand-offs dominate (seconds instead of milliseconds); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EPS = 8 / 255


def _batch(n: int = 6, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return A.tiny_cnn(width=8, seed=0).eval()


@pytest.fixture(scope="module")
def digits():
    """A tiny CNN trained for a few seconds on sklearn digits (3x16x16), and held-out data."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    xtr, ytr, xte, yte = x[perm[:1200]], y[perm[:1200]], x[perm[1200:]], y[perm[1200:]]
    net = A.tiny_cnn(width=12, seed=0)
    params = list(net.parameters())
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    # hand-written Adam: torch.optim's first step imports torch._dynamo, which costs seconds
    step = 0
    for _ in range(22):
        order = torch.randperm(1200, generator=g)
        for i in range(0, 1200, 100):
            idx = order[i : i + 100]
            step += 1
            grads = torch.autograd.grad(F.cross_entropy(net(xtr[idx]), ytr[idx]), params)
            with torch.no_grad():
                for p, gr, a, b in zip(params, grads, m1, m2):
                    a.mul_(0.9).add_(gr, alpha=0.1)
                    b.mul_(0.999).addcmul_(gr, gr, value=0.001)
                    p.sub_(0.02 * (a / (1 - 0.9**step)) / ((b / (1 - 0.999**step)).sqrt() + 1e-8))
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    assert acc > 0.8, f"tiny digits model failed to train (acc {acc:.2f})"
    return net, xte[:96], yte[:96]


def _preset_kwargs(name: str) -> dict:
    kw: dict = {"eps": EPS, "steps": 3}
    if name == "rap":
        kw.update(late_start=1, inner_steps=2)
    if name == "ssa":
        kw.update(n_spectrum=4, copies_per_pass=3)
    if name == "admix":
        kw.update(m1=2, m2=2)
    if name == "sinifgsm":
        kw.update(num_scales=3)
    if name == "vmifgsm":
        kw.update(n_neighbors=3)
    return kw


# ------------------------------------------------------------------ every preset


@pytest.mark.parametrize("name", sorted(A.PRESETS))
@pytest.mark.parametrize("targeted", [False, True])
def test_preset_bounds_shape_and_inputs_untouched(model, name, targeted):
    if name == "po_trip" and not targeted:
        pytest.skip("Po+Trip is targeted only (see test_potrip_requires_targeted)")
    x, y = _batch()
    x_before, y_before = x.clone(), y.clone()
    atk = A.create_attack(name, model, targeted=targeted, seed=0, **_preset_kwargs(name))
    adv = atk(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert not adv.requires_grad
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert not torch.equal(adv, x)  # it did move


def test_potrip_requires_targeted(model):
    with pytest.raises(ValueError, match="targeted"):
        A.PoTrip(model, targeted=False)


def test_presets_are_seeded_deterministic(model):
    x, y = _batch()
    for name in ("difgsm", "tifgsm", "ssa", "admix", "rap"):
        kw = _preset_kwargs(name)
        a = A.create_attack(name, model, seed=3, random_start=True, **kw)(x, y)
        b = A.create_attack(name, model, seed=3, random_start=True, **kw)(x, y)
        c = A.create_attack(name, model, seed=4, random_start=True, **kw)(x, y)
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


def test_generator_argument_advances_between_calls(model):
    x, y = _batch()
    gen = torch.Generator().manual_seed(0)
    atk = A.IFGSM(model, eps=EPS, steps=2, random_start=True, generator=gen)
    first, second = atk(x, y), atk(x, y)
    assert not torch.equal(first, second)
    gen.manual_seed(0)
    assert torch.equal(atk(x, y), first)


def test_l2_norm_attack_stays_in_ball(model):
    x, y = _batch()
    adv = A.IterativeAttack(model, eps=0.5, alpha=0.2, steps=5, norm="l2", random_start=True, seed=0)(x, y)
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1


# ------------------------------------------------------------------ reductions and references


def test_mifgsm_with_zero_decay_equals_ifgsm(model):
    x, y = _batch()
    mi = A.MIFGSM(model, eps=EPS, alpha=1 / 255, steps=6, decay=0.0)(x, y)
    i = A.IFGSM(model, eps=EPS, alpha=1 / 255, steps=6)(x, y)
    assert torch.equal(mi, i)


def test_mifgsm_matches_a_direct_implementation(model):
    x, y = _batch()
    eps, alpha, steps = EPS, 1.5 / 255, 5
    kernel = ops.gaussian_kernel(5)
    adv = x.clone()
    m = torch.zeros_like(x)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (g,) = torch.autograd.grad(loss, adv)
        g = F.conv2d(g, kernel, padding=2, groups=3)
        g = g / g.abs().mean(dim=(1, 2, 3), keepdim=True)
        m = m + g
        adv = adv.detach() + alpha * m.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    ours = A.TIFGSM(model, eps=eps, alpha=alpha, steps=steps, di=False)(x, y)
    assert torch.allclose(ours, adv, atol=1e-6)


def test_sinifgsm_single_scale_without_momentum_equals_ifgsm(model):
    x, y = _batch()
    kw = {"eps": EPS, "alpha": 1 / 255, "steps": 4}
    a = A.SINIFGSM(model, num_scales=1, decay=0.0, **kw)(x, y)
    b = A.IFGSM(model, **kw)(x, y)
    assert torch.equal(a, b)


def test_vmifgsm_without_neighbourhood_equals_mifgsm(model):
    x, y = _batch()
    kw = {"eps": EPS, "alpha": 1 / 255, "steps": 4}
    a = A.VMIFGSM(model, n_neighbors=1, beta=0.0, seed=0, **kw)(x, y)
    b = A.MIFGSM(model, **kw)(x, y)
    assert torch.equal(a, b)
    c = A.VMIFGSM(model, n_neighbors=2, beta=1.5, seed=0, **kw)(x, y)
    assert not torch.equal(c, b)


def test_admix_without_mixing_equals_mifgsm(model):
    x, y = _batch()
    kw = {"eps": EPS, "alpha": 1 / 255, "steps": 4}
    a = A.Admix(model, eta=0.0, m1=1, m2=1, seed=0, **kw)(x, y)
    b = A.MIFGSM(model, **kw)(x, y)
    assert torch.equal(a, b)


def test_ssa_without_noise_or_mask_equals_mifgsm(model):
    x, y = _batch()
    kw = {"eps": EPS, "alpha": 1 / 255, "steps": 4}
    a = A.SSA(model, rho=0.0, sigma=0.0, n_spectrum=5, copies_per_pass=2, seed=0, **kw)(x, y)
    b = A.MIFGSM(model, **kw)(x, y)
    # the DCT round trip is exact up to ~1e-7, so at most a handful of near-zero gradient signs differ
    assert (a != b).float().mean() < 0.01
    assert (a - b).abs().max() <= 2 * kw["alpha"] * kw["steps"] + 1e-6


def test_rap_before_late_start_equals_base_loop(model):
    x, y = _batch()
    kw = {"eps": EPS, "alpha": 1.25 / 255, "steps": 3, "di": True, "ti": True, "mi": True, "seed": 0}
    rap = A.RAP(model, late_start=3, **kw)(x, y)
    base = A.IterativeAttack(model, **kw)(x, y)
    assert torch.equal(rap, base)
    rap_late = A.RAP(model, late_start=1, **kw)(x, y)
    assert not torch.equal(rap_late, base)


def test_rap_reverse_perturbation_bounds(model):
    x, y = _batch()
    atk = A.RAP(model, eps=EPS, alpha=1.25 / 255, steps=2, inner_steps=1, inner_random_start=False, seed=0)
    atk.state = A.AttackState(x=x, labels=y, generator=torch.Generator().manual_seed(0))
    n = atk.reverse_perturbation(x, torch.zeros_like(x), y)
    assert atk.alpha_n == pytest.approx(16 / 255)  # eps_n / inner_steps
    assert (n.abs() <= atk.alpha_n + 1e-7).all() and n.abs().max() > 0
    assert (x + n).min() >= 0 and (x + n).max() <= 1
    atk.state = None


# ------------------------------------------------------------------ defaults and registry


def test_presets_change_defaults_not_signatures(model):
    assert A.IterativeAttack.defaults["alpha"] == pytest.approx(2 / 255)
    assert A.SINIFGSM.defaults["alpha"] == pytest.approx(1.6 / 255) and A.SINIFGSM.defaults["mi"]
    assert A.LogitAttack.defaults["steps"] == 300 and A.LogitAttack.defaults["normalize_grad"] is False
    assert A.PoTrip.defaults["targeted"] is True and A.RAP.defaults["mi"] is False
    atk = A.TIFGSM(model)
    assert (atk.eps, atk.alpha, atk.steps, atk.di, atk.ti, atk.mi) == (
        16 / 255,
        2 / 255,
        10,
        True,
        True,
        True,
    )
    # the five common arguments stay positional; an explicit value beats the class default
    atk = A.LogitAttack(model, 4 / 255, 1 / 255, 7, True, normalize_grad=True)
    assert (atk.eps, atk.alpha, atk.steps, atk.targeted, atk.normalize_grad) == (
        4 / 255,
        1 / 255,
        7,
        True,
        True,
    )
    assert A.IFGSM(model, mi=True).mi
    assert repr(A.DEFAULT) == "DEFAULT"

    class Half(A.DIFGSM):
        defaults = {"alpha": 1 / 255}

    assert Half.defaults["di"] and Half.defaults["alpha"] == 1 / 255 and A.DIFGSM.defaults["alpha"] == 2 / 255
    with pytest.raises(TypeError, match="unknown arguments"):

        class Bad(A.IFGSM):
            defaults = {"epsilon": 0.1}


def test_registry_by_name(model):
    assert {"ifgsm", "mifgsm", "difgsm", "tifgsm", "sinifgsm", "vmifgsm", "admix", "ssa", "logit"} <= set(
        A.list_attacks()
    )
    assert A.attack_class("TI-FGSM".replace("-", "")) is A.TIFGSM
    atk = A.get_attack("po-trip", model, steps=2)
    assert isinstance(atk, A.PoTrip) and atk.targeted
    assert A.create_attack is A.get_attack
    with pytest.raises(ValueError, match="unknown attack preset"):
        A.attack_class("deepfool")


# ------------------------------------------------------------------ attack behaviour


def test_one_targeted_step_lowers_target_ce(digits):
    net, x, y = digits
    t = (y + 3) % 10
    adv = A.IFGSM(net, eps=2 / 255, alpha=2 / 255, steps=1, targeted=True)(x, t)
    with torch.no_grad():
        assert F.cross_entropy(net(adv), t) < F.cross_entropy(net(x), t)


def test_one_untargeted_step_raises_true_ce(digits):
    net, x, y = digits
    adv = A.IFGSM(net, eps=2 / 255, alpha=2 / 255, steps=1)(x, y)
    with torch.no_grad():
        assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y)


@pytest.mark.parametrize("name", ["mifgsm", "tifgsm", "sinifgsm"])
def test_untargeted_attack_raises_error_rate(digits, name):
    net, x, y = digits
    clean_err = A.success_rate(net, x, y, targeted=False)
    atk = A.create_attack(name, net, eps=0.1, alpha=0.02, steps=10, seed=0)
    adv_err = A.success_rate(net, atk(x, y), y, targeted=False)
    assert clean_err < 0.25
    assert adv_err > clean_err + 0.5


@pytest.mark.parametrize("loss", ["ce", "logit"])
def test_targeted_attack_reaches_targets(digits, loss):
    net, x, y = digits
    t = (y + 1) % 10
    before = A.success_rate(net, x, t, targeted=True)
    adv = A.MIFGSM(net, eps=0.15, alpha=0.02, steps=15, targeted=True, loss=loss)(x, t)
    assert A.success_rate(net, adv, t, targeted=True) > before + 0.5


def test_callable_loss_plugs_in(model):
    x, y = _batch()
    calls = []

    def my_ce(z, labels):
        calls.append(z.shape[0])
        return F.cross_entropy(z, labels)

    a = A.DIFGSM(model, eps=EPS, steps=3, loss=my_ce, seed=1)(x, y)
    b = A.DIFGSM(model, eps=EPS, steps=3, loss="ce", seed=1)(x, y)
    assert torch.equal(a, b)
    assert calls == [x.shape[0]] * 3
    # a transform that stacks copies gets its labels repeated
    A.SINIFGSM(model, eps=EPS, steps=1, num_scales=3, loss=my_ce)(x, y)
    assert calls[-1] == 3 * x.shape[0]


def test_non_scalar_loss_is_rejected(model):
    x, y = _batch()
    atk = A.IterativeAttack(model, steps=1, loss=lambda z, t: F.cross_entropy(z, t, reduction="none"))
    with pytest.raises(ValueError, match="scalar"):
        atk(x, y)


def test_hooks_can_be_overridden(model):
    """An IBTA-style subclass: noisy companion drawn once in setup(), a second branch built from
    state.delta inside objective() (with DI on both branches), counted model calls."""

    class TwoBranch(A.IterativeAttack):
        def __init__(self, *args, lam=0.1, gamma=0.1, **kwargs):
            super().__init__(*args, **kwargs)
            self.lam, self.gamma, self.draws, self.calls = lam, gamma, 0, 0

        def setup(self, x, labels):
            if self.lam == 0 and self.gamma == 0:
                return  # no companion: consume no random numbers, so the run equals the baseline
            self.draws += 1
            noise = torch.randn(x.shape, generator=self.state.generator)
            self.state.extra["x_noisy"] = torch.clamp(x + 0.1 * noise, 0, 1)

        def forward(self, x_in):
            self.calls += 1
            return super().forward(x_in)

        def objective(self, z, labels, x_in):
            if self.lam == 0 and self.gamma == 0:
                return self.base_objective(z, labels, x_in)
            z_noisy = self.forward(
                self.transform(self.perturb(self.state.extra["x_noisy"], self.state.delta))
            )
            base = self.base_objective(z, labels, x_in) + self.gamma * self.base_objective(
                z_noisy, labels, x_in
            )
            return base - self.lam * A.symmetric_kl(z, z_noisy, w_qp=self.gamma)

    x, y = _batch()
    kw = {"eps": EPS, "steps": 4, "di": True, "seed": 0}
    atk = TwoBranch(model, lam=5.0, gamma=1.0, **kw)
    adv = atk(x, y)
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert atk.draws == 1 and atk.state is None  # setup once per call; state cleared afterwards
    assert atk.calls == 2 * kw["steps"]
    base = A.DIFGSM(model, **kw)(x, y)
    assert not torch.equal(adv, base)  # the second branch changes the gradient
    plain = TwoBranch(model, lam=0.0, gamma=0.0, **kw)
    assert torch.equal(plain(x, y), base)
    assert plain.calls == kw["steps"] and plain.draws == 0

    class Frozen(A.IterativeAttack):
        def objective(self, z, labels, x_in):
            return 0.0 * z.sum()

    assert torch.equal(Frozen(model, eps=EPS, steps=3)(x, y), x)


def test_model_mode_restored_and_eval_during_attack():
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 16 * 16, 10))
    seen = []
    net.register_forward_hook(lambda mod, inp, out: seen.append(mod.training))
    net.train()
    x, y = _batch()
    A.MIFGSM(net, steps=2)(x, y)
    assert seen and not any(seen)
    assert net.training


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(3, 16, 16),
        torch.rand(2, 3, 16, 16) * 2,
        torch.full((2, 3, 16, 16), float("nan")),
        torch.randint(0, 2, (2, 3, 16, 16)),
    ],
)
def test_bad_images_raise(model, bad):
    with pytest.raises(ValueError):
        A.MIFGSM(model, steps=1)(bad, torch.zeros(bad.shape[0] if bad.ndim == 4 else 3, dtype=torch.long))


def test_bad_arguments_raise(model):
    x, y = _batch()
    with pytest.raises(ValueError, match="eps"):
        A.MIFGSM(model, eps=-0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        A.MIFGSM(model, loss="hinge")
    with pytest.raises(ValueError, match="unknown attack preset"):
        A.create_attack("deepfool", model)
    with pytest.raises(ValueError, match="norm"):
        A.IterativeAttack(model, norm="l1")
    with pytest.raises(ValueError, match="labels"):
        A.MIFGSM(model, steps=1)(x, y[:2])
    with pytest.raises(ValueError, match="labels"):
        A.MIFGSM(model, steps=1)(x, y.float())


def test_register_preset(model):
    class Half(A.IFGSM):
        name = "half_ifgsm"

    A.register_preset("half_ifgsm", Half)
    try:
        assert isinstance(A.create_attack("half_ifgsm", model), Half)
        with pytest.raises(ValueError, match="already registered"):
            A.register_preset("half_ifgsm", Half)
    finally:
        A.PRESETS.pop("half_ifgsm")
