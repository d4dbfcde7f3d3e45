"""Tests of papers_shared.attacks.models: wrapper, ensembles, registry loader, tiny models."""

from __future__ import annotations

import sys
import urllib.error

import pytest
import torch
from torch import nn

from papers_shared.attacks import models


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the thread
    hand-offs dominate (seconds instead of milliseconds); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Linear(nn.Module):
    """Flatten + fixed linear map (any logits shape)."""

    def __init__(self, seed: int, in_features: int = 3 * 8 * 8, classes: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(in_features, classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def _x(n: int = 3, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_wrapper_normalises_and_resizes():
    inner = _Linear(0, 3 * 4 * 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    w = models.ImageNetWrapper(inner, mean, std, input_size=4)
    x = _x()
    resized = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    manual = inner((resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(w(x), manual, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    w(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        models.ImageNetWrapper(inner, std=(1.0, 0.0, 1.0))


def test_mean_logit_ensemble():
    a, b = _Linear(1), _Linear(2)
    x = _x()
    assert torch.allclose(models.MeanLogitEnsemble([a, b])(x), (a(x) + b(x)) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        models.MeanLogitEnsemble([])


def test_normalized_logit_ensemble_hand_formula():
    members = [_Linear(1), _Linear(2), _Linear(3)]
    x = _x()
    zs = [m(x) for m in members]
    ns = [z.norm(dim=1, keepdim=True) for z in zs]
    hand = torch.stack([z / n for z, n in zip(zs, ns)]).mean(0) * torch.cat(ns, 1).mean(1, keepdim=True)
    assert torch.allclose(models.NormalizedLogitEnsemble(members)(x), hand, atol=1e-5)


def test_normalized_logit_ensemble_identical_members_returns_member_logits():
    m = _Linear(4)
    x = _x()
    assert torch.allclose(models.NormalizedLogitEnsemble([m, m, m])(x), m(x), atol=1e-5)


def test_normalized_logit_ensemble_norms_are_detached():
    members = [_Linear(5), _Linear(6)]
    ens = models.NormalizedLogitEnsemble(members)
    x = _x(2).requires_grad_(True)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])
    (ens(x) @ c).sum().backward()
    g_ens = x.grad.clone()
    # reference: norms computed once and used as constants
    with torch.no_grad():
        ns = [m(x).norm(dim=1, keepdim=True) for m in members]
        scale = torch.cat(ns, 1).mean(1, keepdim=True)
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.stack([m(x2) / n for m, n in zip(members, ns)]).mean(0) * scale
    (ref @ c).sum().backward()
    assert torch.allclose(g_ens, x2.grad, atol=1e-5)
    # and it differs from the gradient with norms in the graph
    x3 = x.detach().clone().requires_grad_(True)
    zs = [m(x3) for m in members]
    nn_ = [z.norm(dim=1, keepdim=True) for z in zs]
    live = torch.stack([z / n for z, n in zip(zs, nn_)]).mean(0) * torch.cat(nn_, 1).mean(1, keepdim=True)
    (live @ c).sum().backward()
    assert not torch.allclose(g_ens, x3.grad, atol=1e-4)


def test_tiny_models_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = models.tiny_cnn(seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = models.tiny_cnn(seed=7)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))
    assert a(x).shape == (2, 10)
    mlp = models.tiny_mlp((3, 16, 16), num_classes=4, seed=0)
    assert mlp(x).shape == (2, 4)


def test_load_model_torchvision_random_init():
    m = models.load_model("torchvision:mobilenet_v3_small", pretrained=False)
    assert isinstance(m, models.ImageNetWrapper)
    assert not m.training
    assert m.weights_source == "random-init" and m.preprocessing == "native"
    assert torch.allclose(m.mean.flatten(), torch.tensor(models.IMAGENET_MEAN))
    assert m.input_size is None
    assert all(not p.requires_grad for p in m.parameters())
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_load_model_timm_random_init():
    timm = pytest.importorskip("timm")
    m = models.load_model("timm:mobilenetv3_small_050.lamb_in1k", pretrained=False, preprocessing="native")
    cfg = timm.models.get_pretrained_cfg("mobilenetv3_small_050.lamb_in1k").to_dict()
    assert m.input_size == tuple(cfg["input_size"][1:])
    assert torch.allclose(m.mean.flatten(), torch.tensor(cfg["mean"], dtype=torch.float32))
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_registry_names_resolve():
    timm = pytest.importorskip("timm")
    expected = {
        "resnet50",
        "resnet152",
        "vgg16",
        "vgg19_bn",
        "densenet121",
        "inception_v3",
        "inception_v4",
        "inception_resnet_v2",
        "adv_inception_v3",
        "ens_adv_inception_resnet_v2",
        "vit_base_patch16_224",
    }
    assert expected <= set(models.MODEL_REGISTRY)
    import torchvision

    for spec in models.MODEL_REGISTRY.values():
        if spec.source == "timm":
            assert f"{spec.arch}.{spec.weights}" in timm.list_pretrained(), spec
        else:
            assert spec.weights in [w.name for w in torchvision.models.get_model_weights(spec.arch)], spec


def _fake_timm_create(timm):
    """timm.create_model stand-in: a tiny module carrying the real pretrained cfg of ``name``."""

    def create(name, pretrained=False, **kwargs):
        net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
        net.pretrained_cfg = timm.models.get_pretrained_cfg(name).to_dict()
        return net

    return create


def test_load_model_timm_native_and_paper_preprocessing(monkeypatch):
    timm = pytest.importorskip("timm")
    monkeypatch.setattr(timm, "create_model", _fake_timm_create(timm))
    native = models.load_model("inception_v3", pretrained=False, preprocessing="native")
    assert native.input_size == (299, 299)
    assert torch.allclose(native.mean.flatten(), torch.full((3,), 0.5))
    assert native.weights_source == "random-init"
    paper = models.load_model("adv_inception_v3", pretrained=False, preprocessing="paper")
    assert paper.input_size == (224, 224)
    assert torch.allclose(paper.std.flatten(), torch.tensor(models.IMAGENET_STD))
    assert paper.preprocessing == "paper"


def test_load_model_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        models.load_model("resnet9000", pretrained=False)
    with pytest.raises(ValueError, match="preprocessing"):
        models.load_model("resnet50", pretrained=False, preprocessing="imagenet")


def test_load_model_offline_torchvision_errors_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet50.*pretrained=False"):
        models.load_model("resnet50", pretrained=True, download=False)

    import torchvision.models._api as tv_api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match=r"vgg16.*Pre-download"):
        models.load_model("vgg16", pretrained=True, download=True)


def test_load_model_offline_timm_errors_clearly(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(timm, "create_model", _fake_timm_create(timm))
    with pytest.raises(FileNotFoundError, match=r"inception_v4.*pretrained=False"):
        models.load_model("inception_v4", pretrained=True, download=False)


def test_load_model_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"papers-shared\[attacks\]"):
        models.load_model("inception_v3", pretrained=False)
