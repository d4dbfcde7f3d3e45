import pytest

from fsg_bnn.quick import ABLATIONS, FULL_ABLATIONS, METHODS, build_claims, quick_config, run_method


def _metrics(acc: dict[str, list[float]], final=0.1, initial=1.0):
    runs = [{"losses": [initial, final], "final_loss": final, "initial_loss": initial}]
    return {
        "methods": {k: {"test_acc_per_seed": v} for k, v in acc.items()},
        "runs": runs,
        "seeds": [0, 1, 2],
    }


def test_claims_follow_the_numbers():
    acc = {k: [95.0, 95.0, 95.0] for k in {**METHODS, **ABLATIONS}}
    acc["FSG-official"] = [96.0, 95.5, 95.0]
    acc["FSG-combined"] = [94.0, 94.0, 94.0]  # below MultiFC-lr1e-2 and below STE - 0.5
    claims = build_claims(_metrics(acc))
    assert [c.holds for c in claims] == [True, False, False, False, True, True]
    assert claims[0].paired["diff"] == [1.0, 0.5, 0.0]
    acc["FSG-combined"] = [95.5, 94.9, 94.9]  # mean above alpha0 (95.0) but only one seed: no claim
    assert not build_claims(_metrics(acc))[3].holds
    acc["FSG-combined"] = [94.0, 94.0, 94.0]
    bad = build_claims(_metrics(acc, final=float("nan")))
    assert [c.holds for c in bad][-2:] == [False, False]
    acc.update({k: [93.0, 93.0, 93.0] for k in FULL_ABLATIONS})  # --full adds the HGS and LRE claims
    assert [c.holds for c in build_claims(_metrics(acc))][4:6] == [True, True]


def test_quick_reads_its_shipped_config():
    cfg = quick_config()
    assert cfg.model.arch == "mlp" and cfg.data.dataset == "digits"
    assert cfg.optim.hgs_length == 3 and cfg.train.max_steps == 300


@pytest.mark.slow
def test_run_method_short():
    from fsg_bnn.data import digits_split
    from fsg_bnn.models import mlp

    data = digits_split(0)
    for label in ("STE", "FSG-official"):
        r = run_method(mlp(), METHODS[label], data, seed=0, steps=3, batch=16)
        assert len(r["losses"]) == 3 and 0.0 <= r["test_acc"] <= 100.0


def test_same_seed_same_numbers():
    """Issue 15.7: a (method, seed) run is a function of its seed (every generator seeded from it)."""
    import torch

    from fsg_bnn.data import digits_split
    from fsg_bnn.models import mlp

    data = digits_split(0)
    torch.manual_seed(0)
    fp = mlp()
    settings = {"method": "fsg", "update_mode": "combined", "d_state": 2, "d_conv": 2, "expand": 2}
    runs = [run_method(fp, settings, data, seed=3, steps=3, batch=16) for _ in range(2)]
    assert runs[0]["losses"] == runs[1]["losses"] and runs[0]["test_acc"] == runs[1]["test_acc"]
