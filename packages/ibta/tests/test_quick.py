"""The quick reproduction: claims are computed from measured numbers (spec §8)."""

import json

import pytest

from ibta.config import DigitsConfig, QuickConfig
from ibta.quick import build_claims, quick_reproduction, variant_names


def _summary(bb_ibta, wb_ibta, mine_ibta):
    s = {"mi/base/black_box": 0.40, "mi/base/white_box": 0.90, "mine/mi/base": 0.50}
    for lam in (0.1, 1.0):
        s[f"mi/ibta_lam{lam:g}/black_box"] = bb_ibta
        s[f"mi/ibta_lam{lam:g}/white_box"] = wb_ibta
        s[f"mine/mi/ibta_lam{lam:g}"] = mine_ibta
    return s


def test_claims_follow_the_numbers():
    cfg = QuickConfig(families=["mi"])
    assert variant_names(cfg) == ["base", "ibta_lam0.1", "ibta_lam1"]
    good = build_claims(_summary(0.45, 0.92, 0.40), cfg)
    assert len(good) == 6 and all(c.holds for c in good)
    bad = build_claims(_summary(0.35, 0.80, 0.60), cfg)
    assert not any(c.holds for c in bad)
    r1 = bad[0]
    assert (
        r1.method_value == pytest.approx(0.35) and r1.baseline_value == pytest.approx(0.40) and r1.op == ">="
    )
    r2 = bad[1]
    assert r2.method_value == pytest.approx(0.10) and r2.baseline_value == pytest.approx(0.05)


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    cfg = QuickConfig(
        n_attack=24,
        steps=2,
        families=["mi"],
        seeds=[0],
        mine_steps=20,
        mine_hidden=8,
        digits=DigitsConfig(epochs=1),
    )
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert res.package == "ibta" and res.command == "uv run reproduce ibta"
    assert len(res.claims) == 6
    for c in res.claims:
        assert c.method_value is not None and c.baseline_value is not None
    assert res.claims[0].method_value == pytest.approx(res.metrics["mi/ibta_lam0.1/black_box"])
    assert res.claims[0].baseline_value == pytest.approx(res.metrics["mi/base/black_box"])
    for name in res.plots:
        assert (tmp_path / name).is_file()
    assert set(res.plots) == {"ibta_black_box.png", "ibta_white_box.png", "ibta_mine.png"}
    json.dumps(res.to_dict())
