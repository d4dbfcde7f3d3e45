import pytest

from icl_vmf.quick import build_claims

METHODS = ("linear", "er", "icl", "icl_mix", "icl_kappa01", "icl_mix_kappa01")


def _metrics(final=None, task=None, forget=None, **over):
    seeds = [0, 1, 2]
    base = {
        "linear": 0.70,
        "er": 0.80,
        "icl": 0.70,
        "icl_mix": 0.795,
        "icl_kappa01": 0.75,
        "icl_mix_kappa01": 0.81,
    }
    final = {**base, **(final or {})}
    task = {**{k: 0.96 for k in METHODS}, **(task or {})}
    forget = {**{k: 0.1 for k in METHODS}, "linear": 0.2, **(forget or {})}
    jitter = (-0.002, 0.0, 0.002)
    m = {
        "seeds": seeds,
        "final_class_il_per_seed": {k: [v + j for j in jitter] for k, v in final.items()},
        "final_task_il_per_seed": {k: [v + j for j in jitter] for k, v in task.items()},
        "forgetting_per_seed": {k: [v] * 3 for k, v in forget.items()},
        "icl_with_system2_per_seed": [final["icl"] + 0.05 + j for j in jitter],
        "icl_system1_acc_flagged_per_seed": [0.4] * 3,
        "icl_system1_acc_unflagged_per_seed": [0.85] * 3,
        "tiny_llava": {"hard": 10, "routed": 10},
    }
    m.update(over)
    return m


def _holds(claims):
    return {c.claim.split(" (")[0][:40]: c.holds for c in claims}


def test_claims_are_computed_from_the_numbers():
    claims = build_claims(_metrics())
    assert len(claims) == 12
    assert [c.holds for c in claims] == [
        True,
        False,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
    ]
    assert all(c.paired is not None and c.paired["n"] == 3 for c in claims[:-1])
    flipped = build_claims(
        _metrics(
            final={"er": 0.60, "icl_mix": 0.50, "icl_kappa01": 0.60, "icl_mix_kappa01": 0.55},
            task={"icl": 0.90},
            forget={"icl": 0.3, "icl_mix": 0.3},
            icl_system1_acc_flagged_per_seed=[0.8] * 3,
            icl_with_system2_per_seed=[0.70] * 3,
            tiny_llava={"hard": 10, "routed": 3},
        )
    )
    assert [c.holds for c in flipped] == [False, True] + [False] * 10


def test_every_seed_claims_need_every_seed():
    m = _metrics()
    m["final_class_il_per_seed"]["icl_mix"] = [0.80, 0.80, 0.69]  # mean above ICL, one seed below
    claim = build_claims(m)[3]
    assert claim.method_value > claim.baseline_value and claim.paired["wins"] == 2 and not claim.holds


def test_within_one_point_is_a_tolerance():
    near = build_claims(_metrics(final={"icl_mix": 0.7905}))[2]  # 0.95 points below ER: holds
    far = build_claims(_metrics(final={"icl_mix": 0.7895}))[2]  # 1.05 points below: fails
    assert near.holds and not far.holds
    assert near.paired["diff_mean"] == pytest.approx(-0.0095)
