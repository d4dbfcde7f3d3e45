import math

import pytest
import torch

from t_switch.sparsify import drop_by_sign, drop_global, drop_tensor_by_sign, keep_count, normalize_drop_ratio


def _distinct(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randperm(2 * n, generator=g)[:n].float() + 1.0  # distinct magnitudes
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return v * signs


@pytest.mark.parametrize("r", [0.0, 0.3, 0.5, 0.6, 0.7, 0.9])
def test_keeps_floor_count_per_sign_and_the_largest(r):
    t = _distinct(101).view(1, 101)
    out = drop_tensor_by_sign(t, r)
    for side in (t > 0, t < 0):
        n = int(side.sum())
        kept = out[side] != 0
        assert int(kept.sum()) == max(keep_count(n, r), 0) or (keep_count(n, r) == 0 and int(kept.sum()) == n)
        mags = t[side].abs()
        if kept.any() and (~kept).any():
            assert mags[kept].min() > mags[~kept].max()  # the largest of each sign survive
    nz = out != 0
    assert torch.equal(out[nz], t[nz])  # kept entries unchanged


def test_exact_hand_example():
    t = torch.tensor([0.5, -0.1, 0.2, -0.4, 0.05, -0.3, 0.0, 0.9])
    # positives 0.5, 0.2, 0.05, 0.9 (n=4): keep floor(0.5*4)=2 -> 0.9, 0.5; negatives (n=3): keep 1 -> -0.4
    out = drop_tensor_by_sign(t, 0.5)
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, -0.4, 0.0, 0.0, 0.0, 0.9])


def test_ties_at_threshold_are_all_kept():
    t = torch.tensor([1.0, 1.0, 1.0, 0.5, -2.0])
    out = drop_tensor_by_sign(t, 0.5)  # keep floor(0.5*4)=2 positives, threshold 1.0 -> three tied kept
    assert (out[:3] == 1.0).all() and out[3] == 0
    assert out[4] == -2.0  # one negative: floor(0.5)=0 -> keep all


def test_keep_all_when_count_is_zero():
    t = torch.tensor([0.3, -0.2, 0.1])
    out = drop_tensor_by_sign(t, 0.9)  # floor(0.1*2)=0 positives, floor(0.1*1)=0 negatives
    assert torch.equal(out, t)


def test_r_zero_is_identity_and_percent_equals_fraction():
    t = torch.randn(7, 9)
    assert torch.equal(drop_tensor_by_sign(t, 0.0), t)
    assert torch.equal(drop_tensor_by_sign(t, 60), drop_tensor_by_sign(t, 0.6))
    assert normalize_drop_ratio(60) == 0.6


def test_legacy_float_floor_reproduces_code_rounding():
    assert keep_count(10, 0.9) == 1
    assert keep_count(10, 0.9, legacy_float_floor=True) == int(10 * (1 - 0.9)) == 0
    t = torch.arange(1.0, 11.0)  # 10 positives
    assert int((drop_tensor_by_sign(t, 0.9) != 0).sum()) == 1
    assert int((drop_tensor_by_sign(t, 0.9, legacy_float_floor=True) != 0).sum()) == 10  # keep-all edge


def test_zero_dim_and_half_precision():
    s = torch.tensor(0.7)
    assert torch.equal(drop_tensor_by_sign(s, 0.6), s)
    t = torch.randn(64).to(torch.bfloat16)
    out = drop_tensor_by_sign(t, 0.5)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), drop_tensor_by_sign(t.float(), 0.5))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), 150, float("inf")])
def test_bad_ratio(bad):
    with pytest.raises(ValueError):
        drop_tensor_by_sign(torch.randn(5), bad)


def test_nan_and_dtype_errors():
    with pytest.raises(ValueError, match="NaN"):
        drop_tensor_by_sign(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(TypeError):
        drop_tensor_by_sign(torch.tensor([1, 2, 3]), 0.5)


def test_drop_global_uses_one_threshold():
    tv = {
        "a": torch.tensor([1.0, 2.0, 3.0, -1.0]),
        "b": torch.tensor([10.0, 20.0, -5.0, -6.0]),
        "s": torch.tensor(0.2),
    }
    out = drop_global(
        tv, 0.5
    )  # positives 1,2,3,10,20 keep floor(2.5)=2 -> 10, 20; negatives -1,-5,-6 keep 1 -> -6
    assert out["a"].tolist() == [0, 0, 0, 0]
    assert out["b"].tolist() == [10, 20, 0, -6]
    assert out["s"] == tv["s"]
    per = drop_by_sign(tv, 0.5)
    assert per["a"].tolist() == [
        0.0,
        0.0,
        3.0,
        -1.0,
    ]  # per tensor: keep floor(1.5)=1 positive, all of 1 negative
    assert math.isclose(keep_count(5, 0.5), 2)
