"""Static merging baselines: one shared delta for every task.

Weight Averaging, Task Arithmetic (Ilharco et al., ICLR 2023), TIES-Merging (Yadav et al., NeurIPS 2023;
official ``ties-merging`` code's global trimming), DARE (Yu et al., ICML 2024) and Consensus merging
(Wang et al., ICML 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor

from t_switch.baselines.base import MergeResult, fp32_bytes, prepare, stack
from t_switch.baselines.dynamic import tall_masks
from t_switch.task_vector import TaskVector

__all__ = ["consensus", "dare", "task_arithmetic", "ties_merging", "weight_averaging"]


def _static(method, pre, tasks, names, task_vectors, shared, info=None) -> MergeResult:
    """A static result: one shared delta, stored like one fp32 task vector."""
    nbytes = fp32_bytes(names, task_vectors[tasks[0]])
    return MergeResult(method, tasks, pre, shared=shared, storage_bytes=nbytes, info=dict(info or {}))


def weight_averaging(pretrained, task_vectors, **_) -> MergeResult:
    """``theta_0 + (1/K) sum_k tau_k``."""
    pre, tasks, names = prepare(pretrained, task_vectors)
    shared = {n: stack(task_vectors, n).mean(0) for n in names}
    return _static("weight_averaging", pre, tasks, names, task_vectors, shared)


def task_arithmetic(pretrained, task_vectors, alpha: float = 0.3, **_) -> MergeResult:
    """``theta_0 + alpha sum_k tau_k`` (Ilharco et al. 2023; alpha = 0.3 for ViT)."""
    pre, tasks, names = prepare(pretrained, task_vectors)
    shared = {n: alpha * stack(task_vectors, n).sum(0) for n in names}
    return _static("task_arithmetic", pre, tasks, names, task_vectors, shared, {"alpha": alpha})


def _keep_top_mask(mag: Tensor, keep_frac: float) -> Tensor:
    """Entries whose magnitude is >= the k-th largest (k = ceil-free ``n - int(n (1 - keep))``; ties kept)."""
    n = mag.numel()
    kth = int(n * (1.0 - keep_frac))
    if kth <= 0 or n == 0:
        return torch.ones_like(mag, dtype=torch.bool)
    thr = mag.reshape(-1).kthvalue(kth).values
    return mag >= thr


def ties_merging(
    pretrained, task_vectors, k: float = 0.2, alpha: float = 0.3, trim_scope: str = "global", **_
) -> MergeResult:
    """TIES-Merging (Yadav et al. 2023): trim to the top-``k`` magnitudes, elect ``sign(sum tau~)``, disjoint mean.

    ``trim_scope="global"`` (TIES official code: one threshold over each flattened task vector) or
    ``"tensor"`` (a per-tensor reading of the TIES paper). Zero elected signs take the majority sign of the
    whole merged vector, as in the official code.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k (kept fraction) must be in (0, 1], got {k}")
    if trim_scope not in ("global", "tensor"):
        raise ValueError(f"trim_scope must be 'global' or 'tensor', got {trim_scope!r}")
    pre, tasks, names = prepare(pretrained, task_vectors)
    trimmed: dict[str, Tensor] = {}
    if trim_scope == "global":
        thr = []
        for tv in task_vectors.values():
            flat = torch.cat([tv[n].reshape(-1).float().abs() for n in names])
            kth = int(flat.numel() * (1.0 - k))
            thr.append(flat.kthvalue(kth).values if kth > 0 else flat.new_tensor(0.0))
        thr_t = torch.stack(thr)
        for n in names:
            T = stack(task_vectors, n)
            shape = (-1,) + (1,) * (T.dim() - 1)
            trimmed[n] = torch.where(T.abs() >= thr_t.view(shape), T, torch.zeros(()))
    else:
        for n in names:
            T = stack(task_vectors, n)
            trimmed[n] = torch.stack([torch.where(_keep_top_mask(t.abs(), k), t, torch.zeros(())) for t in T])
    elected = {n: torch.sign(trimmed[n].sum(0)) for n in names}
    majority = torch.sign(sum(e.sum() for e in elected.values()))
    majority = majority if majority != 0 else torch.tensor(1.0)
    shared = {}
    for n in names:
        e = torch.where(elected[n] == 0, majority, elected[n])
        T = trimmed[n]
        agree = torch.where(e > 0, T > 0, T < 0)
        s = (T * agree).sum(0)
        cnt = agree.sum(0).clamp(min=1)
        shared[n] = alpha * s / cnt
    return _static("ties", pre, tasks, names, task_vectors, shared, {"k": k, "alpha": alpha})


def dare(
    pretrained, task_vectors, p: float = 0.9, base: str = "task_arithmetic", seed: int = 0, **base_hp
) -> MergeResult:
    """DARE (Yu et al. 2024): drop each entry with probability ``p``, rescale by ``1/(1-p)``, then ``base``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    if base not in ("task_arithmetic", "ties"):
        raise ValueError(f"base must be 'task_arithmetic' or 'ties', got {base!r}")
    gen = torch.Generator().manual_seed(seed)
    dropped = {}
    for t, tv in task_vectors.items():
        dropped[t] = TaskVector(
            {
                n: v
                * (torch.rand(v.shape, generator=gen) >= p).to(device=v.device, dtype=v.dtype)
                / (1.0 - p)
                for n, v in tv.items()
            }
        )
    fn = task_arithmetic if base == "task_arithmetic" else ties_merging
    res = fn(pretrained, dropped, **base_hp)
    res.method = f"dare_{base}"
    res.info.update(p=p, seed=seed)
    return res


def consensus(
    pretrained, task_vectors, lambda_t: float = 0.4, min_agree: int = 2, alpha: float = 0.3, **_
) -> MergeResult:
    """Consensus merging (Wang et al. 2024): keep entries selected by >= ``min_agree`` TALL masks, then TA."""
    tall = tall_masks(pretrained, task_vectors, lambda_t=lambda_t)
    masks = tall.info["masks"]
    pre, tasks, names = tall.pretrained, tall.tasks, list(next(iter(task_vectors.values())).keys())
    shared = {}
    for n in names:
        votes = sum(masks[t][n].to(torch.int32) for t in tasks)
        keep = votes >= min_agree
        shared[n] = alpha * keep * stack(task_vectors, n).sum(0)
    return _static("consensus", pre, tasks, names, task_vectors, shared, {"alpha": alpha})
