import math

import numpy as np
import pytest
import torch

from papers_shared import metrics as M

# Hand-written 4-session accuracy matrix (rows: after session t, cols: class group s).
A = [
    [0.90, None, None, None],
    [0.80, 0.70, None, None],
    [0.60, 0.75, 0.95, None],
    [0.50, 0.40, 0.85, 0.60],
]


def _arr(a):
    return np.array([[np.nan if v is None else v for v in row] for row in a], dtype=float)


def test_forgetting_hand_computed():
    # group 0: max(0.90, 0.80, 0.60) - 0.50 = 0.40
    # group 1: max(0.70, 0.75) - 0.40 = 0.35   (the max must include every earlier row)
    # group 2: max(0.95) - 0.85 = 0.10         (the mean must include the last earlier group)
    assert M.forgetting(_arr(A)) == pytest.approx((0.40 + 0.35 + 0.10) / 3)


def test_forgetting_not_the_continuum_off_by_one():
    # An implementation that skips the last earlier group, or the row T-1, gets a different number.
    wrong_skip_group = (0.40 + 0.35) / 2
    wrong_skip_row = ((0.90 - 0.50) + (0.70 - 0.40) + 0.0) / 3
    f = M.forgetting(_arr(A))
    assert f != pytest.approx(wrong_skip_group)
    assert f != pytest.approx(wrong_skip_row)


def test_forgetting_partial_matrix_uses_last_completed_row():
    a = _arr(A)
    a[3, :] = np.nan
    m = M.AccuracyMatrix.from_array(np.nan_to_num(a, nan=0.0))
    # from_array fills the lower triangle; build a partial one explicitly instead
    m = M.AccuracyMatrix(4)
    for t in range(3):
        for s in range(t + 1):
            m.set(t, s, A[t][s])
    assert m.completed_sessions() == 3
    assert m.forgetting() == pytest.approx(((0.90 - 0.60) + (0.70 - 0.75)) / 2)


def test_single_session_forgetting_is_zero():
    assert M.forgetting([[0.7]]) == 0.0


def test_accuracy_matrix_rejects_bad_entries():
    m = M.AccuracyMatrix(2)
    with pytest.raises(IndexError):
        m.set(0, 1, 0.5)
    with pytest.raises(ValueError):
        m.set(1, 0, float("nan"))
    with pytest.raises(ValueError):
        M.AccuracyMatrix.from_array([[1.0, 2.0, 3.0]])


def test_session_summaries():
    accs = [0.9, 0.8, 0.65, 0.6]
    assert M.average_accuracy(accs) == pytest.approx(0.7375)
    assert M.performance_drop(accs) == pytest.approx(0.3)
    assert M.last_accuracy(accs) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        M.average_accuracy([])
    with pytest.raises(ValueError):
        M.performance_drop([0.5, float("nan")])


def test_accuracy_from_ids_and_logits():
    y = torch.tensor([0, 1, 2, 2])
    assert M.accuracy(torch.tensor([0, 1, 1, 2]), y) == 0.75
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 2, 2]), 3).float()
    assert M.session_accuracy(logits, y) == 0.75
    with pytest.raises(ValueError):
        M.accuracy(torch.tensor([0, 1]), y)


def test_harmonic_mean_and_base_novel():
    assert M.harmonic_mean(0.6, 0.3) == pytest.approx(2 * 0.6 * 0.3 / 0.9)
    assert M.harmonic_mean(0.0, 0.9) == 0.0
    y = torch.tensor([0, 0, 5, 5])
    pred = torch.tensor([0, 1, 5, 0])
    base, novel = M.base_novel_accuracy(pred, y, base_classes=[0, 1, 2])
    assert (base, novel) == (0.5, 0.5)
    b, n = M.base_novel_accuracy(pred[:2], y[:2], base_classes=[0])
    assert b == 0.5 and math.isnan(n)


def test_success_rate_targeted_and_untargeted():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    assert M.success_rate_from_logits(logits, labels, targeted=True) == pytest.approx(1 / 3)
    assert M.success_rate_from_logits(logits, labels, targeted=False) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.success_rate_from_logits(logits[0], labels, targeted=True)


def test_preference_metrics():
    assert M.preference_accuracy(
        torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    ) == pytest.approx(2 / 3)
    assert M.win_rate(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.win_rate(torch.tensor([]), torch.tensor([]))


def test_run_report_roundtrip(tmp_path):
    r = M.RunReport("m", "d", 0, accs=[0.9, 0.8, 0.65, 0.6], acc_matrix=A)
    r.save(tmp_path / "r.json")
    import json

    d = json.loads((tmp_path / "r.json").read_text())
    assert d["pd"] == pytest.approx(0.3)
    assert d["forgetting"] == pytest.approx((0.40 + 0.35 + 0.10) / 3)
