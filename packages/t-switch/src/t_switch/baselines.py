"""Training-free merging baselines (spec §4) and T-Switch behind one signature.

Every method is ``fn(pretrained, task_vectors, **hyper) -> MergeResult`` with ``pretrained`` a state
dict (or module) and ``task_vectors`` an ordered ``task -> TaskVector`` mapping. A static method
(Weight Averaging, Task Arithmetic, TIES, DARE, Consensus) returns one shared delta; a dynamic method
(Individual, EMR-Merging, TALL masks, T-Switch) a delta per task (task identity known at inference).
``MergeResult.params(task)`` gives ``theta_0 + delta`` on the merged tensors, ready for
``torch.func.functional_call`` (see :func:`t_switch.evaluate.run_params`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from t_switch.switch import BinarySwitch
from t_switch.task_vector import StateLike, TaskVector, state_dict_of

__all__ = [
    "BASELINES",
    "MergeResult",
    "consensus",
    "dare",
    "emr_merging",
    "get_method",
    "individual",
    "tall_masks",
    "task_arithmetic",
    "ties_merging",
    "t_switch",
    "weight_averaging",
]


@dataclass
class MergeResult:
    """Outcome of a merge: a shared delta (static) or a per-task delta function (dynamic)."""

    method: str
    tasks: list[str]
    pretrained: dict[str, Tensor]
    shared: dict[str, Tensor] | None = None
    per_task: Callable[[str], dict[str, Tensor]] | None = None
    storage_bytes: int = 0  # what must be stored besides theta_0
    info: dict = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        return self.per_task is not None

    def delta(self, task: str | None = None) -> dict[str, Tensor]:
        if self.per_task is not None:
            if task not in self.tasks:
                raise KeyError(f"{self.method} is dynamic: pass one of {self.tasks}, got {task!r}")
            return self.per_task(task)
        return self.shared or {}

    def params(self, task: str | None = None) -> dict[str, Tensor]:
        """``theta_0 + delta`` on the merged tensors (in the pre-trained dtype)."""
        out = {}
        for n, d in self.delta(task).items():
            base = self.pretrained[n]
            out[n] = (base.float() + d.float()).to(base.dtype)
        return out


def _prep(
    pretrained: StateLike, task_vectors: Mapping[str, TaskVector]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    if not task_vectors:
        raise ValueError("at least one task vector is required")
    pre = state_dict_of(pretrained, include_buffers=True)
    tasks = list(task_vectors)
    names = list(next(iter(task_vectors.values())).keys())
    for t, tv in task_vectors.items():
        if list(tv.keys()) != names and set(tv.keys()) != set(names):
            raise KeyError(f"task vector {t!r} holds different tensors than {tasks[0]!r}")
        for n in names:
            if n not in pre:
                raise KeyError(f"task-vector tensor {n!r} is not in the pre-trained weights")
            if tv[n].shape != pre[n].shape:
                raise ValueError(f"{t}/{n}: shape {tuple(tv[n].shape)} vs pre-trained {tuple(pre[n].shape)}")
    return pre, tasks, names


def _fp32_bytes(names: list[str], tv: TaskVector) -> int:
    return 4 * sum(tv[n].numel() for n in names)


def _stack(task_vectors: Mapping[str, TaskVector], name: str) -> Tensor:
    return torch.stack([tv[name].float() for tv in task_vectors.values()])


def individual(pretrained, task_vectors, **_) -> MergeResult:
    """Each fine-tuned model on its own task: ``theta_0 + tau_k`` (upper reference)."""
    pre, tasks, names = _prep(pretrained, task_vectors)
    nbytes = sum(_fp32_bytes(names, tv) for tv in task_vectors.values())
    return MergeResult(
        "individual", tasks, pre, per_task=lambda t: dict(task_vectors[t]), storage_bytes=nbytes
    )


def weight_averaging(pretrained, task_vectors, **_) -> MergeResult:
    """``theta_0 + (1/K) sum_k tau_k`` (spec §4)."""
    pre, tasks, names = _prep(pretrained, task_vectors)
    shared = {n: _stack(task_vectors, n).mean(0) for n in names}
    return MergeResult(
        "weight_averaging",
        tasks,
        pre,
        shared=shared,
        storage_bytes=_fp32_bytes(names, task_vectors[tasks[0]]),
    )


def task_arithmetic(pretrained, task_vectors, alpha: float = 0.3, **_) -> MergeResult:
    """``theta_0 + alpha sum_k tau_k`` (spec §4; alpha = 0.3 for ViT)."""
    pre, tasks, names = _prep(pretrained, task_vectors)
    shared = {n: alpha * _stack(task_vectors, n).sum(0) for n in names}
    return MergeResult(
        "task_arithmetic",
        tasks,
        pre,
        shared=shared,
        storage_bytes=_fp32_bytes(names, task_vectors[tasks[0]]),
        info={"alpha": alpha},
    )


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
    """TIES-Merging (spec §4): trim to the top-``k`` magnitudes, elect ``sign(sum tau~)``, disjoint mean.

    ``trim_scope="global"`` (TIES official code: one threshold over each flattened task vector) or
    ``"tensor"`` (the spec's per-tensor wording). Zero elected signs take the majority sign of the
    whole merged vector, as in the official code.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k (kept fraction) must be in (0, 1], got {k}")
    if trim_scope not in ("global", "tensor"):
        raise ValueError(f"trim_scope must be 'global' or 'tensor', got {trim_scope!r}")
    pre, tasks, names = _prep(pretrained, task_vectors)
    trimmed: dict[str, Tensor] = {}
    if trim_scope == "global":
        thr = []
        for tv in task_vectors.values():
            flat = torch.cat([tv[n].reshape(-1).float().abs() for n in names])
            kth = int(flat.numel() * (1.0 - k))
            thr.append(flat.kthvalue(kth).values if kth > 0 else torch.tensor(0.0))
        thr_t = torch.stack(thr)
        for n in names:
            T = _stack(task_vectors, n)
            shape = (-1,) + (1,) * (T.dim() - 1)
            trimmed[n] = torch.where(T.abs() >= thr_t.view(shape), T, torch.zeros(()))
    else:
        for n in names:
            T = _stack(task_vectors, n)
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
    return MergeResult(
        "ties",
        tasks,
        pre,
        shared=shared,
        storage_bytes=_fp32_bytes(names, task_vectors[tasks[0]]),
        info={"k": k, "alpha": alpha},
    )


def dare(
    pretrained, task_vectors, p: float = 0.9, base: str = "task_arithmetic", seed: int = 0, **base_hp
) -> MergeResult:
    """DARE (spec §4): drop each entry with probability ``p``, rescale by ``1/(1-p)``, then ``base``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    if base not in ("task_arithmetic", "ties"):
        raise ValueError(f"base must be 'task_arithmetic' or 'ties', got {base!r}")
    gen = torch.Generator().manual_seed(seed)
    dropped = {}
    for t, tv in task_vectors.items():
        dropped[t] = TaskVector(
            {n: v * (torch.rand(v.shape, generator=gen) >= p).to(v.dtype) / (1.0 - p) for n, v in tv.items()}
        )
    fn = task_arithmetic if base == "task_arithmetic" else ties_merging
    res = fn(pretrained, dropped, **base_hp)
    res.method = f"dare_{base}"
    res.info.update(p=p, seed=seed)
    return res


def emr_merging(pretrained, task_vectors, **_) -> MergeResult:
    """EMR-Merging (spec §4, [EMR] code): unified vector, per-task masks and rescalers.

    ``eps = +1 if mean_k tau_k > 0 else -1`` (the code's ``(mean > 0) * 2 - 1``);
    ``tau_uni = eps * max_k |tau_k|`` over tasks agreeing with ``eps``; ``M_k = 1[tau_k eps > 0]``;
    ``gamma_k = sum_l mean|tau_k^l| / sum_l mean|M_k^l tau_uni^l|``; task ``k`` uses
    ``gamma_k M_k tau_uni``.
    """
    pre, tasks, names = _prep(pretrained, task_vectors)
    uni, masks = {}, {t: {} for t in tasks}
    num = torch.zeros(len(tasks), dtype=torch.float64)
    for n in names:
        T = _stack(task_vectors, n)
        flag = torch.where(T.mean(0) > 0, 1.0, -1.0)
        agree = T * flag > 0
        uni[n] = (T.abs() * agree).amax(0) * flag
        for i, t in enumerate(tasks):
            masks[t][n] = agree[i]
            num[i] += T[i].abs().mean().double()
    den = torch.zeros(len(tasks), dtype=torch.float64)
    for i, t in enumerate(tasks):
        for n in names:
            den[i] += (uni[n] * masks[t][n]).abs().mean().double()
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
    """TALL masks (spec §4): ``m_k = 1[|tau_k| >= lambda_t |tau_MTL - tau_k|]``, task ``k`` uses
    ``m_k * tau_MTL`` with ``tau_MTL = mtl_alpha sum_k tau_k``."""
    pre, tasks, names = _prep(pretrained, task_vectors)
    mtl = {n: mtl_alpha * _stack(task_vectors, n).sum(0) for n in names}
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


def consensus(
    pretrained, task_vectors, lambda_t: float = 0.4, min_agree: int = 2, alpha: float = 0.3, **_
) -> MergeResult:
    """Consensus merging (spec §4): keep entries selected by >= ``min_agree`` TALL masks, then TA."""
    tall = tall_masks(pretrained, task_vectors, lambda_t=lambda_t)
    masks = tall.info["masks"]
    pre, tasks, names = tall.pretrained, tall.tasks, list(next(iter(task_vectors.values())).keys())
    shared = {}
    for n in names:
        votes = sum(masks[t][n].to(torch.int32) for t in tasks)
        keep = votes >= min_agree
        shared[n] = alpha * keep * _stack(task_vectors, n).sum(0)
    return MergeResult(
        "consensus",
        tasks,
        pre,
        shared=shared,
        storage_bytes=_fp32_bytes(names, task_vectors[tasks[0]]),
        info={"alpha": alpha},
    )


def t_switch(
    pretrained, task_vectors, drop_ratio: float = 0.6, group_size: int = 4, **switch_kw
) -> MergeResult:
    """T-Switch (spec §3.2-3.3) under the baseline signature: task ``k`` uses ``tau^_k = lambda S``."""
    from t_switch.storage import storage_report

    pre, tasks, _ = _prep(pretrained, task_vectors)
    switches = {
        t: BinarySwitch.from_task_vector(tv, drop_ratio, **switch_kw) for t, tv in task_vectors.items()
    }
    rep = storage_report(switches, group_size)
    return MergeResult(
        "t_switch",
        tasks,
        pre,
        per_task=lambda t: dict(switches[t].to_task_vector()),
        storage_bytes=int(rep["total"]["total_bytes"]),
        info={"switches": switches, "storage": rep["total"]},
    )


BASELINES: dict[str, Callable[..., MergeResult]] = {
    "individual": individual,
    "weight_averaging": weight_averaging,
    "task_arithmetic": task_arithmetic,
    "ties": ties_merging,
    "dare": dare,
    "emr": emr_merging,
    "tall_masks": tall_masks,
    "consensus": consensus,
    "t_switch": t_switch,
}


def get_method(name: str) -> Callable[..., MergeResult]:
    if name not in BASELINES:
        raise KeyError(f"unknown merging method {name!r}; available: {sorted(BASELINES)}")
    return BASELINES[name]
