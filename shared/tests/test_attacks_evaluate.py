"""Tests of papers_shared.attacks.evaluate and papers_shared.attacks.generative."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from papers_shared import attacks as A


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads on a busy 2-core machine; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Fixed(nn.Module):
    """Returns fixed logits: row ``i`` for the image whose pixel (0, 0, 0) encodes ``i / 1000``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.anchor = nn.Parameter(torch.zeros(()))
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        idx = (x[:, 0, 0, 0] * 1000).round().long()
        return self.logits[idx] + 0 * self.anchor


def _indexed_images(n: int) -> torch.Tensor:
    x = torch.zeros(n, 3, 4, 4)
    x[:, 0, 0, 0] = torch.arange(n) / 1000.0
    return x


def test_success_rate_targeted_untargeted_and_batching():
    n, c = 10, 4
    logits = torch.randn(n, c, generator=torch.Generator().manual_seed(0))
    model = _Fixed(logits)
    x = _indexed_images(n)
    pred = logits.argmax(1)
    labels = pred.clone()
    labels[:3] = (labels[:3] + 1) % c  # 3 mismatches
    model.train()
    assert A.success_rate(model, x, labels, targeted=True, batch_size=3) == pytest.approx(7 / 10)
    assert A.success_rate(model, x, labels, targeted=False, batch_size=3) == pytest.approx(3 / 10)
    assert model.batches[:4] == [3, 3, 3, 1]
    assert model.training
    with pytest.raises(ValueError):
        A.success_rate(model, x, labels[:5], targeted=True)
    with pytest.raises(ValueError):
        A.success_rate(model, x + 2, labels, targeted=True)


def test_success_rate_matches_argmax_on_a_real_model():
    net = A.tiny_cnn(seed=1).eval()
    x = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = (net(x).argmax(1) == y).float().mean().item()
    assert A.success_rate(net, x, y, targeted=True, batch_size=7) == pytest.approx(expected)
    assert A.success_rate(net, x, y, targeted=False) == pytest.approx(1 - expected)


def test_distances():
    x = torch.zeros(2, 3, 2, 2)
    adv = x.clone()
    adv[0, 0, 0, 0] = 0.3
    adv[0, 1, 1, 1] = -0.4
    assert torch.allclose(A.linf_distance(adv, x), torch.tensor([0.4, 0.0]))
    assert torch.allclose(A.l2_distance(adv, x), torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError):
        A.linf_distance(adv, x[:1])


def _models():
    src = A.tiny_cnn(seed=0).eval()
    src.weights_source, src.preprocessing = "test:seed0", "native"
    vic = A.tiny_cnn(seed=1).eval()
    vic.weights_source, vic.preprocessing = "test:seed1", "paper"
    return {"src": src}, {"vic": vic}


def _data(n: int = 12):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = torch.arange(n) % 3
    return [(x[:7], y[:7]), (x[7:], y[7:])]


def test_transfer_matrix_rows_carry_protocol_fields():
    sources, victims = _models()
    rows = A.transfer_matrix(
        sources,
        victims,
        lambda m: A.MIFGSM(m, eps=8 / 255, steps=2),
        _data(),
        protocol="ibta-sub-source",
    )
    assert {(r["source"], r["victim"]) for r in rows} == {("src", "vic"), ("src", "src")}
    for r in rows:
        assert r["protocol"] == "ibta-sub-source"
        assert r["eps"] == pytest.approx(8 / 255) and r["steps"] == 2
        assert r["attack"] == "mifgsm" and r["targeted"] is False and r["target"] is None
        assert r["n"] == 12 and 0 <= r["success"] <= 1
        assert r["source_weights"] == "test:seed0" and r["source_preprocessing"] == "native"
    vic_row = next(r for r in rows if r["victim"] == "vic")
    assert vic_row["victim_weights"] == "test:seed1" and vic_row["victim_preprocessing"] == "paper"
    assert next(r for r in rows if r["victim"] == "src")["white_box"] is True


def test_transfer_matrix_sub_source_targets_drop_target_class():
    sources, victims = _models()
    rows = A.transfer_matrix(
        sources,
        victims,
        lambda m: A.MIFGSM(m, eps=16 / 255, steps=3, targeted=True),
        _data(),
        protocol="ttp-sub-source",
        targets=[0, 2],
        include_white_box=False,
    )
    assert len(rows) == 2
    for r in rows:
        assert r["targeted"] is True and r["victim"] == "vic"
        assert r["n"] == 8  # 12 images, 4 of each class; the target's own 4 are dropped
    mean = A.mean_over_targets(rows)
    assert len(mean) == 1 and mean[0]["num_targets"] == 2 and mean[0]["target"] == "mean"
    assert mean[0]["success"] == pytest.approx((rows[0]["success"] + rows[1]["success"]) / 2)


def test_transfer_matrix_white_box_counts_match_success_rate():
    sources, victims = _models()
    (x1, y1), (x2, y2) = _data()
    x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
    attack_factory = lambda m: A.MIFGSM(m, eps=16 / 255, steps=3, targeted=True)  # noqa: E731
    rows = A.transfer_matrix(sources, victims, attack_factory, (x, y + 1), protocol="nips17")
    adv = attack_factory(sources["src"])(x, y + 1)
    wb = next(r for r in rows if r["white_box"])
    assert wb["success"] == pytest.approx(1 - A.success_rate(sources["src"], adv, y + 1, targeted=False))
    # per-image targets as a third element
    rows3 = A.transfer_matrix(sources, victims, attack_factory, [(x, y, (y + 1) % 10)], protocol="nips17")
    assert all(r["targeted"] for r in rows3)


def test_transfer_matrix_rejects_bad_arguments():
    sources, victims = _models()
    f = lambda m: A.IFGSM(m, steps=1)  # noqa: E731
    with pytest.raises(ValueError, match="protocol"):
        A.transfer_matrix(sources, victims, f, _data(), protocol="imagenet")
    with pytest.raises(ValueError, match="re-iterable"):
        A.transfer_matrix(sources, victims, f, iter(_data()), protocol="nips17")
    assert A.PROTOCOLS == ("ttp-sub-source", "ibta-sub-source", "nips17", "all-source")


# ------------------------------------------------------------------ generative


class _CondGen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shift = (target.float() / 10).view(-1, 1, 1, 1)
        return torch.sigmoid(self.scale * (x - 0.5) * 8 + shift)


class _UncondGen(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def test_generative_attack_bounds_smoothing_and_projection():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x_before = x.clone()
    atk = A.GenerativeAttack(_UncondGen(), eps=10 / 255, smoothing=True)
    assert not atk.conditional
    adv = atk(x)
    assert torch.equal(x, x_before)
    assert (adv - x).abs().max() <= 10 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    expected = A.project_generated(A.generator_smoothing()(1.0 - x), x, 10 / 255)
    assert torch.allclose(adv, expected, atol=1e-6)
    plain = A.GenerativeAttack(_UncondGen(), eps=10 / 255, smoothing=False)(x)
    assert torch.allclose(plain, A.project_generated(1.0 - x, x, 10 / 255))


def test_generative_attack_conditional_labels_and_modes():
    gen = _CondGen()
    gen.train()
    atk = A.GenerativeAttack(gen, eps=16 / 255)
    assert atk.conditional and atk.targeted
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = atk(x, torch.tensor([0, 0, 0]))
    b = atk(x, torch.tensor([9, 9, 9]))
    assert not torch.equal(a, b)
    assert gen.training and not a.requires_grad
    with pytest.raises(ValueError, match="conditional"):
        atk(x)
    # differentiable path for training loops
    u = atk.perturb(x, torch.tensor([1, 2, 3]), eps=0.5)
    u.sum().backward()
    assert gen.scale.grad is not None
    assert not math.isnan(float(gen.scale.grad))


def test_generative_attack_rejects_bad_generators_and_inputs():
    class Wrong(nn.Module):
        def forward(self, x):
            return x[:, :1]

    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="generator must return"):
        A.GenerativeAttack(Wrong())(x)
    with pytest.raises(ValueError):
        A.GenerativeAttack(_UncondGen(), eps=-1.0)
    with pytest.raises(ValueError):
        A.GenerativeAttack(_UncondGen())(x + 2)
