import pytest
import torch

from papers_shared.sessions import few_shot_sessions, task_sessions


def _labels(n_classes=10, per=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per)
    return y[torch.randperm(y.numel(), generator=g)]


def test_task_sessions_disjoint_and_contiguous():
    ytr, yte = _labels(), _labels(per=5, seed=1)
    split = task_sessions(ytr, yte, num_tasks=5)
    assert [s.classes for s in split] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    for s in split:
        assert set(ytr[s.train_idx].tolist()) == set(s.classes)
        assert set(yte[s.test_idx].tolist()) == set(s.classes)
    assert split.test_idx_seen(1).numel() == 4 * 5
    with pytest.raises(ValueError):
        task_sessions(ytr, yte, num_tasks=3)


def test_task_sessions_seeded_order_is_permutation():
    ytr, yte = _labels(), _labels(per=5)
    a = task_sessions(ytr, yte, 5, seed=3)
    b = task_sessions(ytr, yte, 5, seed=3)
    assert a.class_order == b.class_order and sorted(a.class_order) == list(range(10))


def test_few_shot_sessions_shots_and_disjointness():
    ytr, yte = _labels(), _labels(per=5, seed=2)
    split = few_shot_sessions(ytr, yte, base_classes=4, ways=2, shots=3, seed=0)
    assert len(split) == 4
    assert split[0].classes == [0, 1, 2, 3]
    assert split[0].train_idx.numel() == 4 * 20
    seen = set()
    for s in split.sessions[1:]:
        assert len(s.classes) == 2 and not (set(s.classes) & seen)
        seen |= set(s.classes)
        for c in s.classes:
            assert (ytr[s.train_idx] == c).sum() == 3
    split.check()
    # seeded: same seed, same supports; another seed, other supports
    again = few_shot_sessions(ytr, yte, base_classes=4, ways=2, shots=3, seed=0)
    other = few_shot_sessions(ytr, yte, base_classes=4, ways=2, shots=3, seed=1)
    assert torch.equal(again[1].train_idx, split[1].train_idx)
    assert not torch.equal(other[1].train_idx, split[1].train_idx)


def test_few_shot_errors():
    ytr, yte = _labels(), _labels(per=5)
    with pytest.raises(ValueError):
        few_shot_sessions(ytr, yte, base_classes=4, ways=2, shots=30)
    with pytest.raises(ValueError):
        few_shot_sessions(ytr, yte, base_classes=4, ways=2, shots=3, num_sessions=9)
    with pytest.raises(ValueError):
        few_shot_sessions(ytr.float(), yte, base_classes=4, ways=2, shots=3)


def test_check_detects_overlap():
    ytr, yte = _labels(), _labels(per=5)
    split = few_shot_sessions(ytr, yte, base_classes=4, ways=2, shots=3)
    split.sessions[2].classes = list(split.sessions[1].classes)
    with pytest.raises(AssertionError):
        split.check()
