"""V2V / C-FSCIL baseline (Hersche et al., CVPR 2022; official code IBM/constrained-FSCIL, commit cff95a7).

The G2G model with ``interaction="v2v"``, no LGP and no CAG2G, in one of C-FSCIL's incremental modes
(``run_FSCIL.py:align``): 1 = no retraining, 2 = retrain ``g_phi`` on bipolarised prototypes, 3 = nudge the
prototypes, then retrain ``g_phi`` on them. Nudging (``nudging.py:nudging_model`` / ``nudge_prototypes``)
optimises a copy ``p`` of the raw prototypes; the loss applies ``tanh`` to ``p`` (and to the initial
prototypes ``p0``) inside:

    L(p) = mean_{i<j} act(cos(tanh p_i, tanh p_j)) + mean_i (1 - cos(tanh p_i, tanh p0_i))

with ``act(s) = exp(k s) + exp(-k s) - 2`` (``doubleexp``, the default of ``main.py``) or
``exp(k s) - 1`` (``exp``), ``k = 4``, and SGD with Nesterov momentum 0.9. The raw ``p`` becomes the
retraining target, to which the retraining loss applies ``tanh`` once (``torch_blocks.py:myCosineLoss``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from g2g_fscil.config import G2GConfig
from g2g_fscil.graphs import offdiag_mask

__all__ = ["method_config", "nudge_prototypes", "nudging_loss", "v2v_config"]


def method_config(mcfg: G2GConfig, method: str, v2v_mode: int = 1) -> G2GConfig:
    """The model config ``method`` runs with: ``v2v`` is C-FSCIL (no LGP/CAG2G) in incremental mode 1
    (no retraining), 2 (retrain + bipolarise) or 3 (retrain + nudging); other methods run ``mcfg``."""
    if method != "v2v":
        return mcfg
    if v2v_mode not in (1, 2, 3):
        raise ValueError(f"C-FSCIL mode must be 1, 2 or 3, got {v2v_mode}")
    retrain = mcfg.retrain_iter or 10
    modes = {
        1: dict(retrain_iter=0, nudging_iter=0, bipolarize=False),
        2: dict(retrain_iter=retrain, nudging_iter=0, bipolarize=True),
        3: dict(retrain_iter=retrain, nudging_iter=mcfg.nudging_iter or 100, bipolarize=False),
    }
    return dataclasses.replace(
        mcfg, interaction="v2v", lgp=None, cag2g=False, node_dim="full", **modes[v2v_mode]
    )


def v2v_config(mcfg: G2GConfig, mode: int = 1) -> G2GConfig:
    """:func:`method_config` for ``v2v``."""
    return method_config(mcfg, "v2v", mode)


def _act(s: torch.Tensor, act: str, k: float) -> torch.Tensor:
    if act == "doubleexp":
        return torch.exp(k * s) + torch.exp(-k * s) - 2
    if act == "exp":
        return torch.exp(k * s) - 1
    raise ValueError(f"nudging act must be doubleexp or exp, got {act!r}")


def nudging_loss(
    p: torch.Tensor,
    p0: torch.Tensor,
    deviation_weight: float = 1.0,
    act: str = "doubleexp",
    act_exp: float = 4.0,
    inner_tanh: bool = True,
) -> torch.Tensor:
    """C-FSCIL's nudging loss of prototypes ``p [..., C, d]`` (leading dims are independent sets, e.g.
    node positions): ``mean_{i != j} act(cos(r(p_i), r(p_j))) + w * mean (1 - cos(r(p), r(p0)))`` with
    ``r = tanh`` (``inner_tanh``, C-FSCIL on raw prototypes) or the identity (prototypes already in
    ``rho`` space, e.g. G2G node prototypes)."""
    r = torch.tanh if inner_tanh else (lambda v: v)
    v = r(p)
    vn = F.normalize(v, dim=-1, eps=1e-12)
    s = vn @ vn.transpose(-1, -2)
    c = s.shape[-1]
    pair = _act(s[..., offdiag_mask(c, s.device)], act, act_exp).mean() if c > 1 else p.sum() * 0.0
    dev = (1 - F.cosine_similarity(v, r(p0), dim=-1, eps=1e-8)).mean()
    return pair + deviation_weight * dev


def nudge_prototypes(p0: torch.Tensor, mcfg: G2GConfig, inner_tanh: bool = True) -> torch.Tensor:
    """``nudging_iter`` steps of SGD (lr ``nudging_lr``, Nesterov momentum 0.9, as ``nudge_prototypes``)
    on a copy of ``p0``; returns the nudged prototypes (raw when ``inner_tanh``)."""
    if mcfg.legacy_implicit_seeds:
        torch.manual_seed(100)
    p0 = p0.detach()
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.SGD([p], lr=mcfg.nudging_lr, momentum=0.9, nesterov=True)
    for _ in range(mcfg.nudging_iter):
        loss = nudging_loss(p, p0, mcfg.nudging_deviation, mcfg.nudging_act, mcfg.nudging_act_exp, inner_tanh)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p.detach()
