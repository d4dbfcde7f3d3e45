"""Auto-Switch retrieval (official ``merge_vit/merge_vit.py:infer_with_knn_and_task_features`` at
68bfda8): a k-NN classifier over pre-trained features of a query set.

``p_b = predict_proba(phi(x_b))`` is the fraction of the ``k`` nearest query features that belong to each
task (uniform weights, Euclidean by default, as ``sklearn.neighbors.KNeighborsClassifier`` with its
defaults). The switch weights are then

* ``granularity="batch"`` (code): ``w = mean_b p_b`` (one combination per batch);
* ``granularity="sample"`` (ours): one combination per sample;
* ``mode="soft"`` (ViT code): ``w`` itself; ``mode="hard"`` (RoBERTa code): ``one_hot(argmax w)``.

The torch backend breaks distance ties by query-set index (stable sort); ``backend="sklearn"`` calls
scikit-learn for exact parity with the official code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["KNNRouter", "collect_query_features"]

MODES = ("soft", "hard")
GRANULARITIES = ("batch", "sample")


class KNNRouter:
    """k-NN task router. ``fit(features [N, D], labels [N])`` then ``predict_proba`` / ``weights``."""

    def __init__(
        self, k: int = 10, metric: str = "euclidean", backend: str = "torch", num_tasks: int | None = None
    ):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        if backend not in ("torch", "sklearn"):
            raise ValueError(f"backend must be 'torch' or 'sklearn', got {backend!r}")
        self.k, self.metric, self.backend = k, metric, backend
        self.num_tasks = num_tasks
        self.features: Tensor | None = None
        self.labels: Tensor | None = None
        self._sk = None

    def fit(self, features: Tensor, labels: Tensor | Sequence[int]) -> KNNRouter:
        """Store the query set (features of the pre-trained model and their task indices)."""
        features = torch.as_tensor(features).detach()
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if features.dim() != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
        if features.shape[0] != labels.numel():
            raise ValueError(f"{features.shape[0]} features but {labels.numel()} labels")
        if features.shape[0] < self.k:
            raise ValueError(f"query set has {features.shape[0]} samples, fewer than k={self.k}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("query features contain NaN or inf")
        if labels.min() < 0:
            raise ValueError("task labels must be >= 0")
        K = int(labels.max()) + 1
        self.num_tasks = max(K, self.num_tasks or 0)
        self.features, self.labels = features.float(), labels
        if self.backend == "sklearn":
            from sklearn.neighbors import KNeighborsClassifier

            self._sk = KNeighborsClassifier(n_neighbors=self.k, metric=self.metric).fit(
                self.features.numpy(), labels.numpy()
            )
        return self

    def _check(self, features: Tensor) -> Tensor:
        if self.features is None:
            raise RuntimeError("KNNRouter.fit must be called before routing")
        features = torch.as_tensor(features).detach().float().cpu()
        if features.dim() != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"features must be [B, {self.features.shape[1]}], got shape {tuple(features.shape)}"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contain NaN or inf")
        return features

    def predict_proba(self, features: Tensor) -> Tensor:
        """``[B, K]``: share of the ``k`` nearest query samples from each task (rows sum to 1)."""
        x = self._check(features)
        K = int(self.num_tasks)
        if self.backend == "sklearn":
            proba = torch.from_numpy(self._sk.predict_proba(x.numpy())).float()
            out = torch.zeros(x.shape[0], K)
            out[:, torch.as_tensor(self._sk.classes_, dtype=torch.long)] = proba
            return out
        q = self.features
        if self.metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
            q = torch.nn.functional.normalize(q, dim=1)
        d = torch.cdist(x.double(), q.double())
        nn_idx = torch.sort(d, dim=1, stable=True).indices[:, : self.k]
        votes = self.labels[nn_idx]  # [B, k]
        counts = torch.zeros(x.shape[0], K).scatter_add_(1, votes, torch.ones_like(votes, dtype=torch.float))
        return counts / self.k

    def weights(
        self, features: Tensor, mode: str = "soft", granularity: str = "batch", temperature: float = 1.0
    ) -> Tensor:
        """Switch weights: ``[K]`` for ``granularity="batch"``, ``[B, K]`` for ``"sample"``.

        ``temperature`` (ours) sharpens soft weights, ``w^(1/T) / sum w^(1/T)``; ``T = 1`` is the official
        batch-mean of the k-NN vote shares, ``T -> 0`` tends to ``mode="hard"``.
        """
        if not (temperature > 0 and temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        p = self.predict_proba(features)
        w = p.mean(0) if granularity == "batch" else p
        if mode == "hard":
            w = torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype)
        elif temperature != 1.0:
            w = w.double().pow(1.0 / temperature)
            w = (w / w.sum(-1, keepdim=True)).float()
        return w


@torch.no_grad()
def collect_query_features(
    feature_fn: Callable[..., Tensor],
    query: Mapping[str, Iterable] | Sequence[Iterable],
    n_per_task: int = 100,
    unpack: Callable[[object], tuple[tuple, dict]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Features ``phi(x)`` of the first ``n_per_task`` samples of each task's iterable of batches.

    ``query`` maps task -> iterable of batches (a ``DataLoader`` or a list of tensors), in task order.
    A batch is passed to ``feature_fn`` as ``feature_fn(x)`` (a tensor; a ``(x, y)`` tuple uses ``x``),
    ``feature_fn(**batch)`` (a dict without ``labels``), or as ``unpack(batch) -> (args, kwargs)``.
    Returns ``(features [N, D], task_labels [N])``.
    """
    if n_per_task < 1:
        raise ValueError("n_per_task must be >= 1")
    items = list(query.values()) if isinstance(query, Mapping) else list(query)
    feats, labels = [], []
    for t, batches in enumerate(items):
        got = 0
        for batch in batches:
            if got >= n_per_task:
                break
            if unpack is not None:
                args, kwargs = unpack(batch)
            elif isinstance(batch, Mapping):
                args, kwargs = (), {k: v for k, v in batch.items() if k not in ("labels", "label")}
            elif isinstance(batch, (tuple, list)):
                args, kwargs = (batch[0],), {}
            else:
                args, kwargs = (batch,), {}
            f = feature_fn(*args, **kwargs)
            f = f[: n_per_task - got].detach().float().cpu()
            feats.append(f)
            labels.append(torch.full((f.shape[0],), t, dtype=torch.long))
            got += f.shape[0]
        if got == 0:
            raise ValueError(f"query set of task #{t} yielded no samples")
    return torch.cat(feats), torch.cat(labels)
