import copy

import pytest
import torch
import torch.nn.functional as F

import fsg_bnn as fb

SMALL_SLOW = {"d_state": 4, "d_conv": 4, "expand": 4, "hgs_length": 3}


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return fb.binarize(fb.mlp(16, (8, 8), 4))


def batch(seed: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def train_steps(model, opt, k: int, seed: int = 0) -> list[float]:
    losses = []
    for i in range(k):
        x, y = batch(seed + i)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def fsg(model, **kw):
    return fb.FSGOptimizer(model, **{**SMALL_SLOW, **kw})


def forward_backward(model, opt, seed=100):
    x, y = batch(seed)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_fsg_lookahead_formula(alpha):
    model = make_mlp()
    opt = fsg(model, alpha=alpha)
    train_steps(model, opt, 2)
    opt._ensure_generated()
    lr = opt.param_groups[0]["lr"]
    for name, layer in opt.layers:
        g, wt = opt._captured[name]
        fast = g * opt.fast_net(wt.reshape(-1, 1)).view_as(g)
        c = fb.calibration(layer.weight, "dorefa")
        got = opt.lookahead_weight(layer)
        if alpha == 0.0:  # the MultiFC meta gradient alone (the slow net is not run)
            assert torch.allclose(got, layer.weight - lr * c * fast, atol=1e-7)
            continue
        seq = opt.hgs.sequence(name)
        slow = opt.slow_net(seq, layer.lre_index)[0, -g.numel() :, 0].view_as(g)
        if alpha == 1.0:  # the slow gradient alone, uncalibrated
            expected = layer.weight - lr * slow
        else:
            expected = layer.weight - lr * (alpha * slow + (1 - alpha) * c * fast)
        assert torch.allclose(got, expected, atol=1e-7)


def test_first_step_moves_nothing_and_creates_no_meta_grads():
    model = make_mlp()
    opt = fsg(model)
    before = copy.deepcopy(model.state_dict())
    train_steps(model, opt, 1)
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:  # BN statistics do move in the forward
            assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in opt.meta_nets.parameters())


@pytest.mark.parametrize("mode", ["official", "combined"])
def test_second_step_gradient_is_refined_meta_gradient(mode):
    model = make_mlp()
    opt = fsg(model, update_mode=mode, alpha=0.7)
    train_steps(model, opt, 1)
    forward_backward(model, opt)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in opt.fast_net.parameters())
    assert opt.slow_net.model.in_proj.weight.grad.abs().sum() > 0
    meta = {n: {k: v.detach().clone() for k, v in opt._meta[n].items()} for n, _ in opt.layers}
    w_before = {n: layer.weight.detach().clone() for n, layer in opt.layers}
    opt.step()
    for name, layer in opt.layers:
        m = meta[name]
        raw = m["c"] * m["fast"] if mode == "official" else 0.7 * m["slow"] + 0.3 * m["c"] * m["fast"]
        expected = fb.adam_refine(raw, {})
        assert torch.allclose(layer.weight.grad, expected, atol=1e-6)
        assert torch.allclose(layer.weight, w_before[name] - 1e-3 * expected, atol=1e-7)


def test_evaluation_uses_latent_weights():
    model = make_mlp()
    opt = fsg(model)
    train_steps(model, opt, 3)
    plain = copy.deepcopy(model)  # a deep copy drops the optimizer attachment: plain W forward
    assert all(layer.controller is None for _, layer in fb.binary_layers(plain))
    model.eval()
    plain.eval()
    x, _ = batch(7)
    assert torch.equal(model(x), plain(x))


def test_adam_refine_closed_form_and_torch_adam_equivalence():
    torch.manual_seed(0)
    grads = [torch.randn(10) for _ in range(4)]
    state, m, v = {}, torch.zeros(10), torch.zeros(10)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        expected = (1 - 0.999**t) ** 0.5 / (1 - 0.9**t) * m / (v.sqrt() + 1e-8)
        assert torch.allclose(fb.adam_refine(g, state), expected, atol=1e-6)
    # lr * pi(g) is torch Adam's step up to the eps placement
    p = torch.nn.Parameter(torch.randn(10))
    q = p.detach().clone()
    adam = torch.optim.Adam([p], lr=1e-3)
    state = {}
    for g in grads:
        p.grad = g.clone()
        adam.step()
        q -= 1e-3 * fb.adam_refine(g, state)
    assert torch.allclose(p.detach(), q, atol=1e-7)


def test_sgd_refine_momentum():
    state = {}
    g1, g2 = torch.ones(3), 2 * torch.ones(3)
    assert torch.equal(fb.sgd_refine(g1, state, 0.9), g1)
    assert torch.allclose(fb.sgd_refine(g2, state, 0.9), 0.9 * g1 + g2)
    assert torch.equal(fb.sgd_refine(g2, {}, 0.0), g2)


def test_metaquant_forward_value_and_gradient_path():
    model = make_mlp()
    opt = fb.MetaQuantOptimizer(model, "multifc")
    train_steps(model, opt, 2)
    opt._ensure_generated()
    lr = opt.param_groups[0]["lr"]
    params = list(opt.meta_nets.parameters())
    for name, layer in opt.layers:
        prev = opt._prev_grad[name]["weight"]
        w_meta = opt.lookahead_weight(layer)
        assert torch.allclose(w_meta, layer.weight - lr * prev, atol=1e-7)  # value: W - eta W.grad_prev
        g1 = torch.autograd.grad(w_meta.square().sum(), params, retain_graph=True)
        meta = opt._meta[name]
        # same gradient as W - eta c G evaluated with the look-ahead value held fixed
        surrogate = (2 * w_meta.detach() * (-lr * meta["c"] * meta["G"])).sum()
        g2 = torch.autograd.grad(surrogate, params, retain_graph=True)
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g1, g2))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: fsg(m),
        lambda m: fsg(m, slow_net="lstm"),
        lambda m: fb.MetaQuantOptimizer(m, "lstmfc-momentum"),
        lambda m: fb.MetaQuantOptimizer(m, "mamba-history", **SMALL_SLOW),
    ],
    ids=["fsg", "fsg-lstm", "lstmfc-momentum", "mamba-history"],
)
def test_state_dict_resume_is_exact(make):
    model = make_mlp()
    opt = make(model)
    train_steps(model, opt, 3)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    train_steps(model, opt, 2, seed=50)
    model2 = make_mlp(seed=123)
    opt2 = make(model2)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    train_steps(model2, opt2, 2, seed=50)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_layer_batching_modes_agree():
    results = []
    for mode in ("packed", "exact", "pad", "none"):
        model = make_mlp()
        torch.manual_seed(1)
        opt = fsg(model, layer_batching=mode, update_mode="combined")
        train_steps(model, opt, 4)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)
    assert torch.allclose(results[0], results[2], atol=1e-5)
    assert torch.allclose(results[0], results[3], atol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        {"hgs_layout": "coordinate"},
        {"use_lre": False},
        {"swap_roles": True},
        {"slow_net": "s5"},
        {"base_optimizer": "sgd-m"},
        {"fast_input": "latent"},
    ],
)
def test_fsg_variants_train(kw):
    model = make_mlp()
    opt = fsg(model, **kw)
    losses = train_steps(model, opt, 4)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert 0.0 <= opt.stats["sign_flip_rate"] <= 1.0


@pytest.mark.parametrize("method", fb.METAQUANT_METHODS)
def test_every_metaquant_net_updates_weights(method):
    model = make_mlp()
    opt = fb.build_optimizer(model, fb.OptimConfig(method=method, s4_d_model=4, **SMALL_SLOW))
    w0 = model[1].weight.detach().clone()
    train_steps(model, opt, 3)
    assert not torch.equal(model[1].weight, w0)
    assert all(p.grad is None for p in opt.meta_nets.parameters())  # zeroed after each meta step


def test_lr_scheduler_drives_lookahead_eta():
    model = make_mlp()
    opt = fsg(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    train_steps(model, opt, 1)
    sched.step()
    assert opt._lr(model[1].weight) == pytest.approx(5e-4)


def test_clear_errors():
    model = make_mlp()
    opt = fsg(model)
    with pytest.raises(RuntimeError, match="backward"):
        opt.step()
    with pytest.raises(TypeError, match="unknown option"):
        fb.FSGOptimizer(make_mlp(), hgs_len=3)
    with pytest.raises(ValueError, match="alpha"):
        fb.FSGOptimizer(make_mlp(), alpha=1.5)
    with pytest.raises(ValueError, match="binarize"):
        fb.FSGOptimizer(fb.mlp())
    with pytest.raises(ValueError, match="meta net"):
        fb.MetaQuantOptimizer(make_mlp(), "transformer")
    with pytest.raises(ValueError, match="method"):
        fb.MetaQuantOptimizer(make_mlp(), "multifc").load_state_dict(fsg(make_mlp()).state_dict())
    x, y = batch(0)
    x[0, 0] = float("nan")
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()


def test_alpha_zero_does_not_run_the_slow_net():
    """alpha = 0 gives the slow grad weight 0; it is not computed (the HGS stays empty) and the fast-net
    look-ahead is unchanged (the alpha = 0 case of test_fsg_lookahead_formula)."""
    torch.manual_seed(0)
    model = make_mlp()
    opt = fb.FSGOptimizer(model, alpha=0.0, update_mode="combined", d_state=2, d_conv=2, expand=2)
    train_steps(model, opt, 3)
    assert opt.hgs.names() == []
    assert all(p.grad is None for p in opt.slow_net.parameters())


def test_slow_net_refresh_reuses_the_slow_grad_between_refreshes():
    """slow_net_refresh = 2 (documented approximation): the slow net runs at every 2nd generation, its
    output is reused detached in between, the HGS still advances every step; 1 is the exact default."""
    model = make_mlp()
    opt = fsg(model, slow_net_refresh=2, alpha=0.5)
    train_steps(model, opt, 2)  # generation 1 (the first step has none): computed and cached
    cached = {k: v.clone() for k, v in opt._slow_cache.items()}
    forward_backward(model, opt)  # generation 2: reused
    assert all(torch.equal(opt._meta[k]["slow"].reshape(-1), cached[k]) for k in cached)
    assert all(p.grad is None or not p.grad.any() for p in opt.slow_net.parameters())
    assert all(opt.hgs.count(n) == 2 for n in opt.hgs.names())
    opt.step()
    forward_backward(model, opt, seed=101)  # generation 3: recomputed, the slow net gets gradients
    assert any(p.grad is not None and p.grad.any() for p in opt.slow_net.parameters())
    state = opt.state_dict()
    assert state["extra"]["generations"] == 3
    assert fb.OptimConfig().slow_net_refresh == 1
