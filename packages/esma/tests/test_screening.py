import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from esma import EasySampleBank, easy_sample_thresholds, per_sample_loss_gradnorm, screen_easy_samples
from esma.screening import class_mean_logits, select_indices
from papers_shared.attacks import ImageNetWrapper, tiny_cnn
from papers_shared.errors import CheckpointError


def test_threshold_is_qth_distinct_value():
    v = torch.tensor([3.0, 1.0, 1.0, 2.0, 5.0])
    assert easy_sample_thresholds(v, 0) == 1.0
    assert easy_sample_thresholds(v, 2) == 3.0  # distinct sorted: 1, 2, 3, 5
    assert easy_sample_thresholds(v, 4) == math.inf


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_easy_selection_equals_rank_rule(seed):
    g = torch.Generator().manual_seed(seed)
    n, q = 12, 4
    losses = torch.randperm(n, generator=g).double()
    gns = torch.randperm(n, generator=g).double()
    idx, fell = select_indices(losses, gns, q)
    rl, rg = losses.argsort().argsort(), gns.argsort().argsort()
    expected = {i for i in range(n) if rl[i] < q and rg[i] < q}
    if expected:
        assert set(idx.tolist()) == expected and not fell
        assert len(expected) <= q


def test_fallback_and_error_when_easy_set_empty():
    losses = torch.tensor([0.0, 1.0, 2.0, 3.0])
    gns = torch.tensor([3.0, 2.0, 1.0, 0.0])
    idx, fell = select_indices(losses, gns, 2)
    assert fell and idx.tolist() == [0, 1]
    with pytest.raises(ValueError, match="easy set is empty"):
        select_indices(losses, gns, 2, fallback="error")


def test_screening_warns_on_fallback(fixed_logits_cls):
    # class 1: losses increase while gradient norms decrease -> empty easy set
    table = torch.zeros(4, 4)
    table[:, 1] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    scales = torch.tensor([100.0, 10.0, 1.0, 0.1])
    x = torch.zeros(4, 3, 2, 2)
    x[:, 0, 0, 0] = torch.arange(4) / 100
    model = fixed_logits_cls(table, scales)
    with pytest.warns(RuntimeWarning, match="lowest-loss"):
        bank = screen_easy_samples(
            model, TensorDataset(x, torch.ones(4, dtype=torch.long)), [1], q=2, grad_wrt="pixel"
        )
    assert bank.fallback_used == [0] and bank.indices[0] == [0, 1]


def test_hard_and_random_kinds():
    losses = torch.tensor([0.5, 3.0, 1.0, 2.0])
    gns = torch.ones(4)
    assert select_indices(losses, gns, 2, "hard")[0].tolist() == [1, 3]
    r, _ = select_indices(losses, gns, 3, "random", generator=torch.Generator().manual_seed(0))
    assert len(set(r.tolist())) == 3
    with pytest.raises(ValueError, match="kind"):
        select_indices(losses, gns, 2, "medium")


def _fixed_data(FixedLogits):
    # 2 classes x 5 samples; logits chosen so the losses are known; scale controls the gradient norm
    table = torch.zeros(10, 4)
    labels = torch.tensor([1] * 5 + [3] * 5)
    margins = torch.tensor([4.0, 1.0, 3.0, 0.0, 2.0, 2.5, 0.5, 5.0, 1.5, 3.5])
    for i in range(10):
        table[i, labels[i]] = margins[i]
    scales = torch.tensor([0.1, 0.3, 0.2, 0.5, 0.4, 0.2, 0.9, 0.1, 0.6, 0.3])
    x = torch.zeros(10, 3, 2, 2)
    x[:, 0, 0, 0] = torch.arange(10) / 100
    return FixedLogits(table, scales), x, labels, table


def test_screening_on_hand_built_classifier(fixed_logits_cls):
    model, x, y, table = _fixed_data(fixed_logits_cls)
    loss, gn, z = per_sample_loss_gradnorm(model, x, y, grad_wrt="pixel")
    assert torch.allclose(loss, F.cross_entropy(table, y, reduction="none"), atol=1e-6)
    assert torch.allclose(z, table)
    bank = screen_easy_samples(model, TensorDataset(x, y), [1, 3], q=2, batch_size=4, grad_wrt="pixel")
    for k, c in enumerate([1, 3]):
        pos = torch.nonzero(y == c).flatten()
        lk = loss[pos].double()
        gk = gn[pos].double()
        expect = {
            int(pos[i])
            for i in range(5)
            if (lk < easy_sample_thresholds(lk, 2))[i] and (gk < easy_sample_thresholds(gk, 2))[i]
        }
        if not expect:
            expect = {int(pos[i]) for i in lk.argsort()[:2].tolist()}
        assert set(bank.indices[k]) == expect
        assert torch.allclose(bank.anchors[k], table[sorted(expect)].mean(0))
        assert torch.allclose(bank.class_means[k], table[pos].mean(0))


def test_gradient_is_taken_wrt_normalized_input():
    torch.manual_seed(0)
    net = tiny_cnn(10, 3, 8, seed=0).eval()
    wrapped = ImageNetWrapper(net)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    _, gn_norm, _ = per_sample_loss_gradnorm(wrapped, x, y, "normalized")
    _, gn_pix, _ = per_sample_loss_gradnorm(wrapped, x, y, "pixel")
    xp = x.clone().requires_grad_(True)
    F.cross_entropy(wrapped(xp), y, reduction="sum").backward()
    std = wrapped.std
    assert torch.allclose(gn_pix, xp.grad.flatten(1).norm(dim=1), rtol=1e-4)
    assert torch.allclose(gn_norm, (xp.grad * std).flatten(1).norm(dim=1), rtol=1e-4)


def test_bank_round_trip_and_errors(tmp_path, tiny_bank):
    tiny_bank.indices = {0: [1, 2]}
    tiny_bank.stats = {0: {"index": [1, 2, 4], "loss": [0.5, 0.25, 3.0], "gradnorm": [1.0, 2.0, 0.125]}}
    tiny_bank.class_means = torch.randn(4, 10)
    tiny_bank.fallback_used = [2]
    path = tiny_bank.save(tmp_path / "bank.safetensors")
    b2 = EasySampleBank.load(path)
    assert torch.equal(b2.anchors, tiny_bank.anchors) and torch.equal(b2.class_means, tiny_bank.class_means)
    assert b2.class_ids == [3, 5, 7, 9] and b2.indices[0] == [1, 2] and b2.stats == tiny_bank.stats
    assert b2.kind == "easy" and b2.q == 2 and b2.fallback_used == [2] and b2.boundary_admitted == []
    assert b2.to_index(torch.tensor([9, 3])).tolist() == [3, 0]
    assert b2.to_index(torch.tensor([4]), strict=False).tolist() == [-1]
    with pytest.raises(ValueError, match="not target classes"):
        b2.to_index(torch.tensor([4]))
    with pytest.raises(FileNotFoundError, match="esma screen"):
        EasySampleBank.load(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="NaN"):
        EasySampleBank(torch.tensor([[float("nan")]]), [0])
    with pytest.raises(ValueError, match="class ids"):
        EasySampleBank(torch.zeros(2, 3), [0])


def test_legacy_pt_bank_loads_and_foreign_files_are_refused(tmp_path, tiny_bank, evil_file, refused):
    old = {"format": "esma-bank-v1", "anchors": tiny_bank.anchors, "class_ids": [3, 5, 7, 9], "kind": "hard",
           "q": 3, "indices": {0: [4]}, "stats": {}, "class_means": None, "fallback_used": []}  # fmt: skip
    torch.save(old, tmp_path / "old.pt")
    b = EasySampleBank.load(tmp_path / "old.pt")
    assert (
        b.kind == "hard" and b.q == 3 and b.indices == {0: [4]} and torch.equal(b.anchors, tiny_bank.anchors)
    )
    path, target = evil_file
    with pytest.raises(CheckpointError) as err:
        EasySampleBank.load(path)
    refused(err, path, target)
    torch.save({"anchors": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt is not an ESMA easy-sample bank"):
        EasySampleBank.load(tmp_path / "foreign.pt")


class _BatchSensitive(torch.nn.Module):
    """Class-0 logit = a per-sample margin (sample id in pixel [0, 0, 0]), scaled by ``1 + delta`` when the
    batch holds one image: the float noise between a batched and a batch-of-one pass, made visible."""

    def __init__(self, margins, delta):
        super().__init__()
        self.register_buffer("margins", torch.tensor(margins))
        self.delta = delta

    def forward(self, x):
        ids = torch.round(x[:, 0, 0, 0].detach() * 100).long()
        m = self.margins[ids] * (1 + self.delta if x.shape[0] == 1 else 1.0)
        z = torch.zeros(x.shape[0], 3)
        z[:, 0] = m
        return z + 0.01 * x.flatten(1)[:, 1:].sum(1, keepdim=True) * torch.tensor([-1.0, 0.0, 1.0])


def test_legacy_screening_boundary_admits_the_threshold_sample():
    """Official ``Sample_screening.find_target_matches``: thresholds from the batched pass, admission of the
    batch-of-one recomputation -> the q-th sample (which defines both thresholds) gets in."""
    margins = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    x = torch.full((6, 3, 4, 4), 0.5)
    x[:, 0, 0, 0] = torch.arange(6) / 100
    data = TensorDataset(x, torch.zeros(6, dtype=torch.long))
    model = _BatchSensitive(margins, delta=1e-3)
    ours = screen_easy_samples(model, data, [0], q=2, grad_wrt="pixel")
    legacy = screen_easy_samples(model, data, [0], q=2, grad_wrt="pixel", legacy_boundary=True)
    assert ours.indices[0] == [0, 1] and ours.boundary_admitted == []
    assert legacy.indices[0] == [0, 1, 2] and legacy.boundary_admitted == [0]
    # anchors are the batch-of-one logits there, as in the official code
    single = torch.stack([model(x[i : i + 1])[0] for i in range(3)]).mean(0)
    assert torch.allclose(legacy.anchors[0], single)
    # without the noise both rules agree
    plain = _BatchSensitive(margins, delta=0.0)
    same = screen_easy_samples(plain, data, [0], q=2, grad_wrt="pixel", legacy_boundary=True)
    assert same.indices[0] == [0, 1] and same.boundary_admitted == []


def test_screening_bad_inputs(fixed_logits_cls):
    model, x, y, _ = _fixed_data(fixed_logits_cls)
    bad = x.clone()
    bad[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        per_sample_loss_gradnorm(model, bad, y)
    with pytest.raises(ValueError, match="no samples of target classes"):
        screen_easy_samples(model, TensorDataset(x, y), [1, 2], q=2, grad_wrt="pixel")
    with pytest.raises(ValueError, match="no samples of classes"):
        class_mean_logits(model, TensorDataset(x, y), [0])
