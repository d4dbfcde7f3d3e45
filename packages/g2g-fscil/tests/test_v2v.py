"""C-FSCIL mode 3 (nudging + retraining) against a hand-written reference of C-FSCIL's code.

The reference follows IBM/constrained-FSCIL (commit cff95a7) step by step, written out independently:
``nudging.py:nudging_model`` (raw prototypes as the parameter, ``tanh`` inside the loss, pairwise penalty
over the strict upper triangle divided by the number of pairs, deviation ``1 - cos(tanh p, tanh p0)``),
``nudge_prototypes`` (SGD, Nesterov momentum 0.9) and ``run_FSCIL.py:align`` (prototypes from the feature
replay through the FC, nudged, then FC retraining with ``myCosineLoss`` under ``tanh`` applied once).
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from g2g_fscil.baselines.v2v import method_config, nudge_prototypes, nudging_loss
from g2g_fscil.experiment import build_model, write_base_memory
from g2g_fscil.trainer import incremental_session


class _ReferenceNudging(nn.Module):
    def __init__(self, protos: torch.Tensor, act: str, k: float) -> None:
        super().__init__()
        self.p = nn.Parameter(protos.clone())
        n = protos.shape[0]
        self.register_buffer("upper", torch.triu(torch.ones(n, n), diagonal=1))
        self.act, self.k = act, k

    def forward(self, p0: torch.Tensor) -> torch.Tensor:
        v = torch.tanh(self.p)
        vn = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        s = (vn @ vn.T) * self.upper  # masked entries are 0 and their penalty is 0 for both acts
        if self.act == "doubleexp":
            pen = torch.exp(self.k * s) + torch.exp(-self.k * s) - 2
        else:
            pen = torch.exp(self.k * s) - 1
        pair = pen.sum() / self.upper.sum()
        dev = (1 - F.cosine_similarity(v, torch.tanh(p0), dim=1)).mean()
        return pair + dev


def _reference_nudge(p0: torch.Tensor, steps: int, lr: float, act: str = "doubleexp", k: float = 4.0):
    model = _ReferenceNudging(p0, act, k)
    opt = torch.optim.SGD(model.parameters(), lr=lr, nesterov=True, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        model(p0).backward()
        opt.step()
    return model.p.detach()


@pytest.mark.parametrize("act", ["doubleexp", "exp"])
def test_nudging_equals_cfscil_reference(tiny_cfg, act):
    g = torch.Generator().manual_seed(0)
    p0 = 2 * torch.randn(7, 16, generator=g)  # raw prototypes, where tanh is far from linear
    cfg = dataclasses.replace(tiny_cfg, nudging_iter=30, nudging_lr=0.1, nudging_act=act)
    ours = nudge_prototypes(p0, cfg)
    ref = _reference_nudge(p0, 30, 0.1, act)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - p0).abs().max() > 1e-2  # the prototypes did move
    # the loss itself: tanh inside, mean over pairs, deviation from tanh(p0)
    model = _ReferenceNudging(p0 + 0.3, act, 4.0)
    ours_loss = nudging_loss(p0 + 0.3, p0, 1.0, act, 4.0, inner_tanh=True)
    torch.testing.assert_close(ours_loss, model(p0).detach())


def test_mode3_session_equals_cfscil_align(digits, tiny_cfg):
    """Prototypes from the feature replay -> nudged raw keys -> retraining on tanh(key), Nesterov SGD."""
    cfg = dataclasses.replace(method_config(tiny_cfg, "v2v", 3), nudging_iter=20, retrain_iter=3)
    assert (cfg.interaction, cfg.retrain_iter, cfg.nudging_iter, cfg.bipolarize) == ("v2v", 3, 20, False)
    torch.manual_seed(0)
    net = build_model(digits, cfg)
    write_base_memory(net, digits)
    proj0 = copy.deepcopy(net.proj)
    incremental_session(net, digits, digits.split[1])
    feats = net.memory.feats.mean(1)  # the class-mean backbone features (C-FSCIL feat_replay)
    with torch.no_grad():
        keys0 = proj0(feats)
    target = _reference_nudge(keys0, 20, cfg.nudging_lr)
    ref = copy.deepcopy(proj0)
    opt = torch.optim.SGD(
        ref.parameters(), lr=cfg.retrain_lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )  # C-FSCIL train_FSCIL's optimiser over the FC
    for _ in range(3):
        opt.zero_grad()
        loss = -F.cosine_similarity(torch.tanh(ref(feats)), torch.tanh(target), dim=1).mean()
        loss.backward()
        opt.step()
    torch.testing.assert_close(net.proj.weight, ref.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(net.proj.bias, ref.bias, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # stage 5: prototypes rebuilt from the feature replay with the new FC
        torch.testing.assert_close(net.memory.keys, ref(feats), atol=1e-6, rtol=1e-5)
