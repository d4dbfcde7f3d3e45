"""Auto-Switch: training-free switch combination by retrieval from a small query set.

Per test batch, the pre-trained model's feature ``phi(x)`` of every sample is matched against the
features of ``n_q`` query samples per task by a k-NN classifier; the share of the ``k`` neighbours from each
task, averaged over the batch, is the switch weight ``w`` and the batch runs through
``theta_0 + sum_k w_k tau^_k`` (paper, Auto-Switch; official ``merge_vit/merge_vit.py:
infer_with_knn_and_task_features`` and ``prepare_mixed_dataset_knn`` at 68bfda8). :func:`routing_report`
and :func:`select_router` measure and choose the router (feature, k) on held-out data (ours).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from t_switch.bank import SwitchedModel, output_tensor
from t_switch.router import KNNRouter

__all__ = ["AutoSwitch", "routing_report", "select_router"]


class AutoSwitch(nn.Module):
    """Auto-Switch: route each batch (or sample) by k-NN on pre-trained features, then run the switched
    model (official ``merge_vit/merge_vit.py:infer_with_knn_and_task_features`` at 68bfda8).

    Args:
        switched: the :class:`SwitchedModel`.
        router: a fitted :class:`KNNRouter` whose task indices follow ``switched.bank.tasks``.
        feature_fn: ``phi``: same inputs as the model, returns ``[B, D]`` pre-trained features
            (default: the module itself with ``theta_0``, e.g. a CLIP image encoder's embedding).
        mode: ``"soft"`` (ViT code) or ``"hard"`` (RoBERTa code).
        granularity: ``"batch"`` (code) or ``"sample"`` (ours); per-sample routing groups the samples
            with equal weights and returns the output tensor (``.logits`` of model outputs).
        temperature: soft weights become ``w^(1/T)`` renormalised (ours; 1 = the code's vote shares).
    """

    def __init__(
        self,
        switched: SwitchedModel,
        router: KNNRouter,
        feature_fn: Callable[..., Tensor] | None = None,
        mode: str = "soft",
        granularity: str = "batch",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if router.num_tasks is not None and router.num_tasks > switched.bank.num_tasks:
            raise ValueError(f"router knows {router.num_tasks} tasks, the bank {switched.bank.num_tasks}")
        self.switched = switched
        self.router = router
        self.feature_fn = feature_fn or (lambda *a, **kw: output_tensor(switched.module(*a, **kw)))
        self.mode = mode
        self.granularity = granularity
        self.temperature = float(temperature)
        self.last_weights: Tensor | None = None

    def route(self, *args, **kwargs) -> Tensor:
        """Switch weights for these inputs (``[K]`` or ``[B, K]``)."""
        with torch.no_grad():
            feats = self.feature_fn(*args, **kwargs)
        w = self.router.weights(feats, self.mode, self.granularity, self.temperature)
        K = self.switched.bank.num_tasks
        if w.shape[-1] < K:  # router fitted on fewer tasks than the bank holds
            w = torch.nn.functional.pad(w, (0, K - w.shape[-1]))
        return w

    def forward(self, *args, overrides: Mapping[str, Tensor] | None = None, **kwargs):
        w = self.route(*args, **kwargs)
        self.last_weights = w
        if self.granularity == "batch":
            return self.switched(*args, weights=w, overrides=overrides, **kwargs)
        uniq, inv = torch.unique(w, dim=0, return_inverse=True)
        out = None
        for j in range(uniq.shape[0]):
            idx = torch.nonzero(inv == j).squeeze(1)
            sub_a = tuple(_take(a, idx) for a in args)
            sub_k = {k: _take(v, idx) for k, v in kwargs.items()}
            y = output_tensor(self.switched(*sub_a, weights=uniq[j], overrides=overrides, **sub_k))
            if out is None:
                out = y.new_empty((w.shape[0], *y.shape[1:]))
            out[idx.to(y.device)] = y
        return out


def _take(v, idx: Tensor):
    return v[idx.to(v.device)] if isinstance(v, Tensor) and v.dim() > 0 else v


def routing_report(router: KNNRouter, features: Tensor, tasks: Tensor, batch_size: int | None = None) -> dict:
    """How well ``router`` routes labelled samples (``tasks`` = true task index per row of ``features``).

    ``sample_accuracy``: % of samples whose k-NN vote argmax is their task; ``weight_on_task``: mean vote
    share of the true task (%); with ``batch_size``, ``batch_accuracy``: % of consecutive same-task batches
    whose batch-mean weights put the most mass on the right task (the official batch routing).
    """
    tasks = torch.as_tensor(tasks, dtype=torch.long)
    p = router.predict_proba(features)
    rows = torch.arange(tasks.numel())
    out = {
        "sample_accuracy": 100.0 * float((p.argmax(1) == tasks).float().mean()),
        "weight_on_task": 100.0 * float(p[rows, tasks].mean()),
    }
    if batch_size:
        hits, n = 0, 0
        for t in torch.unique(tasks).tolist():
            pt = p[tasks == t]
            for i in range(0, pt.shape[0], batch_size):
                hits += int(pt[i : i + batch_size].mean(0).argmax()) == t
                n += 1
        out["batch_accuracy"] = 100.0 * hits / max(n, 1)
    return out


def select_router(
    query: Mapping[str, tuple[Tensor, Tensor]],
    val: Mapping[str, tuple[Tensor, Tensor]],
    ks: Sequence[int],
    metric: str = "euclidean",
) -> tuple[dict, list[dict]]:
    """Choose the router's feature and ``k`` on held-out data (ours).

    ``query[f]`` / ``val[f]`` hold ``(features, task_index)`` of the query set and of a validation split
    under feature ``f``. Every ``(f, k)`` is scored by :func:`routing_report` on ``val``; the best
    per-sample accuracy wins, ties broken by the weight on the right task, then by the order given.
    Returns ``(best_row, all_rows)``.
    """
    rows = []
    for f, (qf, ql) in query.items():
        vf, vl = val[f]
        for k in ks:
            if k > qf.shape[0]:
                continue
            rep = routing_report(KNNRouter(k, metric).fit(qf, ql), vf, vl)
            rows.append({"feature": f, "k": int(k), **rep})
    if not rows:
        raise ValueError("no (feature, k) candidate fits the query set")
    best = max(rows, key=lambda r: (r["sample_accuracy"], r["weight_on_task"], -rows.index(r)))
    return best, rows
