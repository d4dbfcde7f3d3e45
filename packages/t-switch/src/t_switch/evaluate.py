"""One evaluator for every method (so comparisons are fair): run a module with replaced tensors via
``torch.func.functional_call`` and score it on a task's loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from t_switch.baselines import MergeResult
from t_switch.merge import AutoSwitch, SwitchedModel

__all__ = ["evaluate_auto_switch", "evaluate_merge", "evaluate_switched", "run_params", "score_loader"]


def run_params(module: nn.Module, params: Mapping[str, Tensor] | None, *args, **kwargs):
    """``module(*args, **kwargs)`` with ``params`` replacing its tensors (no copy, module unchanged)."""
    if not params:
        return module(*args, **kwargs)
    return functional_call(module, dict(params), args, kwargs, strict=False)


def _logits(out) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _call(fn: Callable, x, **kw):
    """``fn(x, **kw)``, or ``fn(**x, **kw)`` for dict inputs (tokenised text)."""
    return fn(**x, **kw) if isinstance(x, Mapping) else fn(x, **kw)


@torch.no_grad()
def score_loader(
    forward: Callable[[Tensor], Tensor], loader: Iterable, metric: Callable | None = None
) -> float:
    """Top-1 accuracy in % (or ``metric(preds, targets)``) of ``forward`` over ``(x, y)`` batches."""
    preds, ys = [], []
    for x, y in loader:
        logits = _logits(forward(x))
        preds.append(
            logits.argmax(-1).cpu() if logits.dim() > 1 and logits.shape[-1] > 1 else logits.squeeze(-1).cpu()
        )
        ys.append(y.cpu())
    if not preds:
        raise ValueError("empty evaluation loader")
    p, t = torch.cat(preds), torch.cat(ys)
    if metric is not None:
        return float(metric(p, t))
    return 100.0 * float((p == t).float().mean())


def evaluate_merge(
    module: nn.Module,
    result: MergeResult,
    loaders: Mapping[str, Iterable],
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    metric: Callable | None = None,
) -> dict[str, float]:
    """Per-task scores of a :class:`MergeResult` (task-specific delta for dynamic methods) and ``avg``."""
    module.eval()
    out = {}
    static = None if result.dynamic else result.params()
    for task, loader in loaders.items():
        params = dict(static if static is not None else result.params(task))
        if overrides and task in overrides:
            params.update(overrides[task])
        out[task] = score_loader(
            lambda x, p=params: _call(lambda *a, **k: run_params(module, p, *a, **k), x), loader, metric
        )
    out["avg"] = sum(out[t] for t in loaders) / len(loaders)
    return out


def evaluate_switched(
    model: SwitchedModel,
    loaders: Mapping[str, Iterable],
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    metric: Callable | None = None,
) -> dict[str, float]:
    """T-Switch (task known, spec §3.3): each task's loader with ``w = e_task``."""
    model.eval()
    out = {}
    for task, loader in loaders.items():
        ov = overrides.get(task) if overrides else None
        out[task] = score_loader(
            lambda x, t=task, o=ov: _call(model, x, weights=t, overrides=o), loader, metric
        )
    out["avg"] = sum(out[t] for t in loaders) / len(loaders)
    return out


def evaluate_auto_switch(
    auto: AutoSwitch,
    loaders: Mapping[str, Iterable],
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    metric: Callable | None = None,
) -> dict[str, float]:
    """Auto-Switch (spec §3.4) with the evaluated task's head (oracle head, as in the code); also
    reports ``routing_<task>``: the mean routing weight given to the right task (in %)."""
    auto.eval()
    out = {}
    tasks = auto.switched.bank.tasks
    for task, loader in loaders.items():
        ov = overrides.get(task) if overrides else None
        ws = []

        def fwd(x, o=ov, ws=ws):
            y = _call(auto, x, overrides=o)
            w = auto.last_weights
            ws.append((w if w.dim() == 2 else w.expand(_logits(y).shape[0], -1)).cpu())
            return y

        out[task] = score_loader(fwd, loader, metric)
        out[f"routing_{task}"] = 100.0 * float(torch.cat(ws)[:, tasks.index(task)].mean())
    out["avg"] = sum(out[t] for t in loaders) / len(loaders)
    return out
