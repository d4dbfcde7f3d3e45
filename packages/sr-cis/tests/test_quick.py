import pytest

from sr_cis.quick import build_claims, quick_experiment


def test_quick_reads_its_shipped_config():
    cfg = quick_experiment()
    assert cfg.name == "quick" and cfg.data.name == "digits" and len(cfg.quick.seeds) >= 3
    assert cfg.system.fast.routing == "frozen_prototype" and cfg.system.generator.gaussian_source == "corpus"


def _metrics(**over):
    base = {
        "final.sr_cis": [92.0, 93.0, 94.0], "final.simple_cil": [88.0, 90.0, 89.0],
        "final.sr_cis_fast": [87.0, 89.0, 88.0], "region_acc.default": [97.0, 96.0, 98.0],
        "region_acc.max_conf": [70.0, 72.0, 66.0], "lora_rel_delta.sr_cis": [0.2, 0.3, 0.25],
        "final.sr_cis_no_lora_fast": [88.0, 90.0, 89.0], "route_frac": [19.0, 21.0, 20.0],
        "acc_final_flagged": [85.0, 80.0, 82.0], "acc_fast_flagged": [50.0, 55.0, 60.0],
        "slow_gain.default": [5.0, 4.0, 4.5], "slow_gain.max_prob_zscore": [3.0, 2.0, 2.5],
        "acc_fast_unflagged": [95.0, 96.0, 94.0], "final.per_task_lora": [86.0, 85.0, 87.0],
        "final.sr_cis_pixel_replay": [93.0, 93.0, 93.0], "final.seq_lora": [30.0, 35.0, 33.0],
        "forgetting.per_task_lora": [5.0, 6.0, 4.0], "forgetting.seq_lora": [60.0, 55.0, 58.0],
    }  # fmt: skip
    base.update(over)
    return {"seeds": base, "passes.sr_cis": 2.0, "passes.per_task_lora": 5.0}


def test_claims_are_computed_from_the_per_seed_numbers():
    claims = build_claims(_metrics(), [0, 1, 2])
    held = {c.claim.split(":")[0][:40]: c.holds for c in claims}
    assert len(claims) == 16
    assert [c.holds for c in claims] == [True, False, True, True, False, True, True, True, True, True, True,
                                         True, True, True, True, True]  # fmt: skip
    assert claims[0].paired["diff"] == [4.0, 3.0, 5.0] and claims[0].paired["wins"] == 3
    assert held
    # one seed against the others: a 2-of-3 majority still holds, a 1-of-3 does not
    assert build_claims(_metrics(**{"final.sr_cis": [92.0, 89.0, 94.0]}), [0, 1, 2])[0].holds
    assert not build_claims(_metrics(**{"final.sr_cis": [92.0, 89.0, 88.0]}), [0, 1, 2])[0].holds
    # the region claim needs every seed
    assert not build_claims(_metrics(**{"region_acc.max_conf": [98.0, 72.0, 66.0]}), [0, 1, 2])[2].holds
    m = _metrics(**{"fewshot_drop.sr_cis": [1.0, 0.0, 0.5], "fewshot_drop.per_task_lora": [2.0, 1.0, 1.0],
                    "fewshot_drop.simple_cil": [0.0, 0.0, 0.0]})  # fmt: skip
    assert [c.holds for c in build_claims(m, [0, 1, 2])[16:]] == [True, False]


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    from sr_cis.quick import quick_reproduction

    cfg = quick_experiment()
    cfg.pretrain_epochs = 2
    cfg.system.stm.epochs = 1
    cfg.seq_lora_epochs = 1
    cfg.system.restructure.epochs = 1
    cfg.system.text.n_desc = 4
    cfg.quick.seeds = [0, 1]
    cfg.quick.tiny_llava = False
    cfg.quick.few_shot = None
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert len(res.claims) == 16 and all(isinstance(c.holds, bool) for c in res.claims)
    assert res.claims[0].paired["n"] == 2
    for k in (
        "region_acc.default",
        "region_acc.nearest_prototype",
        "region_acc.max_conf",
        "route_frac",
        "lora_rel_delta.sr_cis",
    ):
        assert k in res.metrics
    assert (tmp_path / "sr-cis_routing.png").is_file()
