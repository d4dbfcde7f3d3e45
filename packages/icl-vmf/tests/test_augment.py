import pytest
import torch

from icl_vmf.augment import ViewAugment, adjust_hue, random_hflip, rgb_to_grayscale


def _imgs(n=4, seed=0):
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_zero_strength_view_is_identity():
    aug = ViewAugment(
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        degrees=0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
        grayscale_p=0,
    )
    x = _imgs()
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)


def test_view_is_per_sample_seeded_and_in_range():
    aug = ViewAugment()
    x = _imgs(1).expand(6, -1, -1, -1).contiguous()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a[0], a[1])  # independent parameters per sample
    assert ViewAugment(size=8)(x).shape == (6, 3, 8, 8)
    with pytest.raises(ValueError, match="RGB"):
        aug(torch.rand(2, 1, 8, 8))


def test_hue_full_turn_is_identity_and_grayscale_has_equal_channels():
    x = _imgs()
    torch.testing.assert_close(adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_hue(x, torch.ones(4)), x, atol=1e-5, rtol=0)
    shifted = adjust_hue(x, torch.full((4,), 0.5))
    assert (shifted - x).abs().max() > 0.1
    # hue rotation keeps HSV value (max channel) and the grey level of grey pixels
    torch.testing.assert_close(shifted.max(1).values, x.max(1).values, atol=1e-5, rtol=0)
    g = ViewAugment(
        scale=(1, 1), ratio=(1, 1), degrees=0, brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=1.0
    )(x)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    torch.testing.assert_close(g[:, :1], rgb_to_grayscale(x), atol=1e-5, rtol=0)


def test_random_hflip():
    x = _imgs()
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)
