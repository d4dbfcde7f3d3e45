"""The quick reproduction: paired claims computed from per-seed numbers, the shipped config, plots."""

import json

import pytest

from ibta.config import DigitsConfig, ExperimentConfig, QuickConfig
from ibta.quick import build_claims, quick_config, quick_reproduction, variants


def _raw(bb_base, bb_ibta, wb_base, wb_ibta):
    return {
        "mi": {
            "base": {"black_box": bb_base, "white_box": wb_base},
            "ibta_lam0.1": {"black_box": bb_ibta, "white_box": wb_ibta},
        }
    }


def test_variants_claim_lambda_and_ablation():
    q = QuickConfig()
    assert variants(q, "mi") == (["base", "ibta_lam0.1"], ["ibta_lam1"])
    assert variants(q, "di") == (
        ["base", "ibta_lam0.1"],
        ["ibta_lam1", "ibta_lam0.1_shared", "ibta_lam1_shared"],
    )


def test_claims_are_paired_over_seeds_and_need_wins():
    q = QuickConfig(families=["mi"], seeds=[0, 1, 2, 3], white_box_tolerance=0.05)
    mine = {"base": [0.5, 0.6, 0.5], "ibta_lam0.1": [0.4, 0.5, 0.45]}
    good = build_claims(_raw([0.4, 0.5, 0.4, 0.5], [0.45, 0.55, 0.41, 0.52], [0.9] * 4, [0.88] * 4), mine, q)
    assert [c.claim[:2] for c in good] == ["R1", "R2", "R3"] and all(c.holds for c in good)
    r1 = good[0]
    assert r1.paired["diff"] == pytest.approx([0.05, 0.05, 0.01, 0.02]) and r1.paired["wins"] == 4
    assert r1.paired["seeds"] == [0, 1, 2, 3] and r1.paired["min_wins"] == 2
    # a mean carried by one seed is not an effect: only 1 of 4 seeds wins
    one = build_claims(_raw([0.4] * 4, [0.6, 0.39, 0.39, 0.39], [0.9] * 4, [0.8] * 4), {}, q)
    assert one[0].method_value > one[0].baseline_value and not one[0].holds
    assert not one[1].holds  # white-box dropped by 0.1 > tolerance
    assert len(one) == 2  # no MINE numbers, no R3


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    cfg = quick_config()
    cfg.digits = DigitsConfig(epochs=1)
    cfg.quick = QuickConfig(
        n_attack=16,
        steps=2,
        rap_late_start=1,
        families=["mi", "rap_logit_ti"],
        seeds=[0, 1],
        ablation_seeds=1,
        mine_steps=20,
        mine_hidden=8,
        mine_seeds=1,
    )
    assert isinstance(cfg, ExperimentConfig)
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert res.package == "ibta" and res.command == "uv run reproduce ibta" and res.seeds == [0, 1]
    assert [c.claim[:2] for c in res.claims] == ["R1", "R2", "R1", "R2", "R3"]
    r1 = res.claims[0]
    assert r1.paired["method"] == res.metrics["mi/ibta_lam0.1/black_box_per_seed"]
    assert r1.paired["baseline"] == res.metrics["mi/base/black_box_per_seed"]
    assert len(res.metrics["rap_logit_ti/ibta_lam1_shared/black_box_per_seed"]) == 1  # ablation: first seed
    for name in res.plots:
        assert (tmp_path / name).is_file()
    assert set(res.plots) == {
        "ibta_black_box.png",
        "ibta_white_box.png",
        "ibta_paired_diff.png",
        "ibta_mine.png",
    }
    json.dumps(res.to_dict())
