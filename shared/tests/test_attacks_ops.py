"""Tests of papers_shared.attacks.ops: projections, kernels, input transforms, DCT, momentum."""

from __future__ import annotations

import math

import pytest
import torch

from papers_shared.attacks import ops


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the thread
    hand-offs dominate (seconds instead of milliseconds); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


# ------------------------------------------------------------------ projections


def test_project_linf_bounds_box_and_idempotent():
    x = _images()
    far = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    eps = 8 / 255
    p = ops.project_linf(far, x, eps)
    assert (p - x).abs().max() <= eps + 1e-6
    assert p.min() >= 0 and p.max() <= 1
    assert torch.equal(ops.project_linf(p, x, eps), p)
    inside = torch.clamp(x + 0.5 * eps * torch.sign(torch.randn_like(x)), 0, 1)
    assert torch.equal(ops.project_linf(inside, x, eps), inside)


def test_project_l2_bounds_and_inside_points_unchanged():
    x = _images()
    far = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    eps = 0.5
    p = ops.project_l2(far, x, eps)
    assert ((p - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    assert p.min() >= 0 and p.max() <= 1
    small = torch.clamp(x + 1e-3 * torch.randn_like(x), 0, 1)
    assert torch.allclose(ops.project_l2(small, x, eps), small, atol=1e-7)


def test_project_generated_formula_and_idempotent():
    x = _images()
    u = torch.rand_like(x)
    eps = 10 / 255
    p = ops.project_generated(u, x, eps)
    expected = torch.clamp(torch.min(torch.max(u, x - eps), x + eps), 0, 1)
    assert torch.equal(p, expected)
    assert (p - x).abs().max() <= eps + 1e-6
    assert torch.equal(ops.project_generated(p, x, eps), p)


@pytest.mark.parametrize("fn", [ops.project_linf, ops.project_l2, ops.project_generated])
def test_projections_reject_negative_eps(fn):
    x = _images(1)
    with pytest.raises(ValueError, match="eps"):
        fn(x, x, -0.1)


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("size", [3, 5, 7])
def test_gaussian_kernel_normalised_and_symmetric(size):
    k = ops.gaussian_kernel(size, 3.0)
    assert k.shape == (3, 1, size, size)
    assert torch.allclose(k.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-6)
    k2 = k[0, 0]
    assert torch.allclose(k2, k2.flip(0))
    assert torch.allclose(k2, k2.flip(1))
    assert torch.allclose(k2, k2.T)
    c = size // 2
    assert k2[c, c] == k2.max()
    # separable pdf on linspace(-3, 3, size): ratio of centre to corner = exp(9) in 2-D
    assert math.isclose(float(k2[c, c] / k2[0, 0]), math.exp(9.0), rel_tol=1e-4)


def test_gaussian_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ops.gaussian_kernel(0)
    with pytest.raises(ValueError):
        ops.gaussian_kernel(5, nsig=0.0)


def test_ti_smooth_constant_gradient_identity_away_from_borders():
    g = torch.full((2, 3, 12, 12), 0.7)
    out = ops.ti_smooth(g, ops.gaussian_kernel(5))
    assert out.shape == g.shape
    assert torch.allclose(out[..., 2:-2, 2:-2], g[..., 2:-2, 2:-2], atol=1e-6)
    # zero padding: the borders lose mass
    assert (out[..., 0, :] < 0.7 - 1e-3).all()


def test_ti_smooth_is_linear_and_channelwise():
    g = torch.zeros(1, 3, 9, 9)
    g[0, 1, 4, 4] = 1.0
    out = ops.ti_smooth(g, ops.gaussian_kernel(5))
    assert out[0, 0].abs().sum() == 0 and out[0, 2].abs().sum() == 0
    assert torch.allclose(out[0, 1, 2:7, 2:7], ops.gaussian_kernel(5)[0, 0])


def test_generator_smoothing_properties():
    s = ops.generator_smoothing(3, 1.0)
    assert sum(p.numel() for p in s.parameters()) == 0
    assert torch.allclose(s.kernel.sum(dim=(1, 2, 3)), torch.ones(3))
    x = torch.full((1, 3, 8, 8), 0.5)
    y = s(x)
    assert y.shape == x.shape
    assert torch.allclose(y[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1], atol=1e-6)
    assert (y[..., 0, 0] < 0.5).all()
    # TTP kernel for k=3, sigma=1: corner/centre = exp(-1)
    k = s.kernel[0, 0]
    assert math.isclose(float(k[0, 0] / k[1, 1]), math.exp(-1.0), rel_tol=1e-5)


# ------------------------------------------------------------------ input transforms


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_input_diversity_keeps_size(rate):
    x = _images(2, 32)
    for seed in range(5):
        out = ops.input_diversity(x, rate, 1.0, torch.Generator().manual_seed(seed))
        assert out.shape == x.shape


def test_input_diversity_identity_when_prob_zero():
    x = _images(2, 32)
    assert torch.equal(ops.input_diversity(x, 0.9, 0.0, torch.Generator().manual_seed(0)), x)


def test_input_diversity_shrink_pads_with_zeros_and_is_seeded():
    x = _images(2, 32) * 0.5 + 0.25  # strictly positive
    a = ops.input_diversity(x, 0.9, 1.0, torch.Generator().manual_seed(3))
    b = ops.input_diversity(x, 0.9, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    assert (a == 0).any()  # padding
    outs = {
        tuple(ops.input_diversity(x, 0.9, 1.0, torch.Generator().manual_seed(s)).flatten()[:50].tolist())
        for s in range(6)
    }
    assert len(outs) > 1


def test_input_diversity_is_differentiable():
    x = _images(1, 16).requires_grad_(True)
    out = ops.input_diversity(x, 0.9, 1.0, torch.Generator().manual_seed(0))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_input_diversity_bad_prob():
    with pytest.raises(ValueError):
        ops.input_diversity(_images(1), 0.9, 1.5)


def test_scale_copies_values():
    x = _images(2)
    out = ops.scale_copies(x, 3)
    assert out.shape == (6, 3, 16, 16)
    assert torch.allclose(out[2:4], x / 2)
    assert torch.allclose(out[4:6], x / 4)


def test_admix_formula_and_shape():
    x = _images(2)
    pool = _images(1, seed=5)
    out = ops.admix(x, pool, eta=0.2, m1=2, m2=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (12, 3, 16, 16)
    mixed = x + 0.2 * pool
    assert torch.allclose(out[:2], mixed)
    assert torch.allclose(out[6:8], mixed / 2)
    default_pool = ops.admix(x, None, m1=5, m2=3)
    assert default_pool.shape == (30, 3, 16, 16)


# ------------------------------------------------------------------ DCT / spectrum


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_dct_round_trip(norm):
    x = torch.rand(2, 3, 24, 17, generator=torch.Generator().manual_seed(0))
    back = ops.idct_2d(ops.dct_2d(x, norm), norm)
    assert (back - x).abs().max() < 1e-5


def test_dct_conventions():
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    # un-normalised DCT-II: X_00 = 4 * sum (factor 2 per dimension)
    assert math.isclose(float(ops.dct_2d(x)[0, 0, 0, 0]), 4 * float(x.sum()), rel_tol=1e-5)
    # orthonormal: energy preserved
    assert math.isclose(float(ops.dct_2d(x, "ortho").pow(2).sum()), float(x.pow(2).sum()), rel_tol=1e-5)
    # a constant image has only a DC coefficient
    c = ops.dct_2d(torch.full((1, 1, 8, 8), 0.3), "ortho")
    assert c[..., 1:, :].abs().max() < 1e-5 and c[..., 0, 1:].abs().max() < 1e-5
    with pytest.raises(ValueError):
        ops.dct_2d(x, "forward")


def test_spectrum_transform_identity_without_noise_and_mask_range():
    x = _images(2)
    out = ops.spectrum_transform(x, rho=0.0, sigma=0.0, generator=torch.Generator().manual_seed(0))
    assert (out - x).abs().max() < 1e-5
    a = ops.spectrum_transform(x, 0.5, 16 / 255, torch.Generator().manual_seed(1))
    b = ops.spectrum_transform(x, 0.5, 16 / 255, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    # explicit noise / mask reuse the same draw on two inputs
    noise = torch.zeros_like(x)
    mask = torch.full_like(x, 2.0)
    assert torch.allclose(ops.spectrum_transform(x, noise=noise, mask=mask), 2 * x, atol=1e-5)


# ------------------------------------------------------------------ gradient processing


def test_l1_mean_normalize_and_momentum():
    g = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g[1] = 0.0
    n = ops.l1_mean_normalize(g)
    means = n.abs().mean(dim=(1, 2, 3))
    assert torch.allclose(means[[0, 2]], torch.ones(2), atol=1e-6)
    assert means[1] == 0 and torch.isfinite(n).all()
    m = ops.momentum_update(None, n, 1.0)
    assert torch.equal(m, n)
    assert torch.allclose(ops.momentum_update(m, n, 0.5), 1.5 * n)
