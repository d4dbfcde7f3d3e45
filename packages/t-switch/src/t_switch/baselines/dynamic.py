"""Dynamic merging baselines: a delta per task (task identity known at inference).

Individual (each fine-tuned model on its own task), EMR-Merging (Huang et al., NeurIPS 2024; official
``harveyhuang18/EMR_Merging`` ``merge_utils/emr_merging``) and TALL masks (Wang et al., ICML 2024).
"""

from __future__ import annotations

import math

import torch

from t_switch.baselines.base import MergeResult, fp32_bytes, prepare, stack

__all__ = ["emr_merging", "individual", "tall_masks"]


def individual(pretrained, task_vectors, **_) -> MergeResult:
    """Each fine-tuned model on its own task: ``theta_0 + tau_k`` (upper reference)."""
    pre, tasks, names = prepare(pretrained, task_vectors)
    nbytes = sum(fp32_bytes(names, tv) for tv in task_vectors.values())
    return MergeResult(
        "individual", tasks, pre, per_task=lambda t: dict(task_vectors[t]), storage_bytes=nbytes
    )


def emr_merging(pretrained, task_vectors, **_) -> MergeResult:
    """EMR-Merging (official ``harveyhuang18/EMR_Merging`` code): unified vector, per-task masks and rescalers.

    ``eps = +1 if mean_k tau_k > 0 else -1`` (the code's ``(mean > 0) * 2 - 1``);
    ``tau_uni = eps * max_k |tau_k|`` over tasks agreeing with ``eps``; ``M_k = 1[tau_k eps > 0]``;
    ``gamma_k = sum_l mean|tau_k^l| / sum_l mean|M_k^l tau_uni^l|``; task ``k`` uses
    ``gamma_k M_k tau_uni``.
    """
    pre, tasks, names = prepare(pretrained, task_vectors)
    uni, masks = {}, {t: {} for t in tasks}
    num = torch.zeros(len(tasks), dtype=torch.float64)
    for n in names:
        T = stack(task_vectors, n)
        flag = torch.where(T.mean(0) > 0, 1.0, -1.0)
        agree = T * flag > 0
        uni[n] = (T.abs() * agree).amax(0) * flag
        for i, t in enumerate(tasks):
            masks[t][n] = agree[i]
            num[i] += float(T[i].abs().mean())
    den = torch.zeros(len(tasks), dtype=torch.float64)
    for i, t in enumerate(tasks):
        for n in names:
            den[i] += float((uni[n] * masks[t][n]).abs().mean())
    gamma = {t: float(num[i] / den[i]) if den[i] > 0 else 0.0 for i, t in enumerate(tasks)}
    numel = sum(pre[n].numel() for n in names)
    nbytes = 4 * numel + len(tasks) * (math.ceil(numel / 8) + 4)
    return MergeResult(
        "emr",
        tasks,
        pre,
        per_task=lambda t: {n: gamma[t] * masks[t][n] * uni[n] for n in names},
        storage_bytes=nbytes,
        info={"rescalers": gamma},
    )


def tall_masks(pretrained, task_vectors, lambda_t: float = 0.4, mtl_alpha: float = 1.0, **_) -> MergeResult:
    """TALL masks (Wang et al. 2024): ``m_k = 1[|tau_k| >= lambda_t |tau_MTL - tau_k|]``, task ``k`` uses
    ``m_k * tau_MTL`` with ``tau_MTL = mtl_alpha sum_k tau_k``."""
    pre, tasks, names = prepare(pretrained, task_vectors)
    mtl = {n: mtl_alpha * stack(task_vectors, n).sum(0) for n in names}
    masks = {
        t: {
            n: task_vectors[t][n].float().abs() >= lambda_t * (mtl[n] - task_vectors[t][n].float()).abs()
            for n in names
        }
        for t in tasks
    }
    numel = sum(pre[n].numel() for n in names)
    return MergeResult(
        "tall_masks",
        tasks,
        pre,
        per_task=lambda t: {n: masks[t][n] * mtl[n] for n in names},
        storage_bytes=4 * numel + len(tasks) * math.ceil(numel / 8),
        info={"lambda_t": lambda_t, "masks": masks},
    )
