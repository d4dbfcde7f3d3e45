"""One evaluator for every method (so comparisons are fair): run a module with replaced tensors via
``torch.func.functional_call`` and score it on a task's loader.

The ``score_*`` functions score one task (one cell of a merging table, the unit the table shards across
processes); the ``evaluate_*`` functions loop them over tasks and add the average.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from t_switch.auto_switch import AutoSwitch
from t_switch.bank import SwitchedModel, output_tensor
from t_switch.baselines import MergeResult

__all__ = [
    "evaluate_auto_switch",
    "evaluate_merge",
    "evaluate_switched",
    "glue_metric",
    "run_params",
    "score_auto_switch",
    "score_loader",
    "score_merge",
    "score_switched",
]


def run_params(module: nn.Module, params: Mapping[str, Tensor] | None, *args, **kwargs):
    """``module(*args, **kwargs)`` with ``params`` replacing its tensors (no copy, module unchanged)."""
    if not params:
        return module(*args, **kwargs)
    return functional_call(module, dict(params), args, kwargs, strict=False)


def _call(fn: Callable, x, **kw):
    """``fn(x, **kw)``, or ``fn(**x, **kw)`` for dict inputs (tokenised text)."""
    return fn(**x, **kw) if isinstance(x, Mapping) else fn(x, **kw)


def _to(x, device):
    if device is None:
        return x
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, Tensor) else x


def glue_metric(task: str) -> Callable[[Tensor, Tensor], float]:
    """CoLA: Matthews corr.; STS-B: mean(Pearson, Spearman); others: accuracy (all in %), as the official
    ``merge_lm/utils/metrics.py:compute_metrics`` reports them."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import matthews_corrcoef

    if task == "cola":
        return lambda p, t: 100.0 * matthews_corrcoef(t.numpy(), p.numpy())
    if task == "stsb":
        return lambda p, t: 50.0 * (pearsonr(p.numpy(), t.numpy())[0] + spearmanr(p.numpy(), t.numpy())[0])
    return lambda p, t: 100.0 * float((p == t).float().mean())


@torch.no_grad()
def score_loader(
    forward: Callable[[Tensor], Tensor],
    loader: Iterable,
    metric: Callable | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy in % (or ``metric(preds, targets)``) of ``forward`` over ``(x, y)`` batches."""
    preds, ys = [], []
    for x, y in loader:
        logits = output_tensor(forward(_to(x, device)))
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


def _with_head(params: Mapping[str, Tensor], overrides, task: str) -> dict[str, Tensor]:
    out = dict(params)
    if overrides and task in overrides:
        out.update(overrides[task])
    return out


def score_params(
    module: nn.Module,
    params: Mapping[str, Tensor],
    loader: Iterable,
    metric: Callable | None = None,
    device=None,
) -> float:
    """Score ``module`` run with ``params`` on one loader."""
    return score_loader(
        lambda x: _call(lambda *a, **k: run_params(module, params, *a, **k), x), loader, metric, device
    )


def score_merge(
    module: nn.Module,
    result: MergeResult,
    task: str,
    loader: Iterable,
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    metric: Callable | None = None,
    device=None,
) -> float:
    """One task's score of a :class:`MergeResult` (its task-specific delta for dynamic methods)."""
    params = _with_head(result.params(None if not result.dynamic else task), overrides, task)
    return score_params(module, params, loader, metric, device)


def score_switched(
    model: SwitchedModel,
    task: str,
    loader: Iterable,
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    metric: Callable | None = None,
    device=None,
) -> float:
    """T-Switch (task known): the task's loader with ``w = e_task``."""
    ov = overrides.get(task) if overrides else None
    return score_loader(lambda x: _call(model, x, weights=task, overrides=ov), loader, metric, device)


def score_auto_switch(
    auto: AutoSwitch,
    task: str,
    loader: Iterable,
    overrides: Mapping[str, Mapping[str, Tensor]] | None = None,
    metric: Callable | None = None,
    device=None,
) -> tuple[float, float]:
    """Auto-Switch with the evaluated task's head (oracle head, as in the official code); returns
    ``(score, routing)`` with ``routing`` the mean weight given to the right task (in %)."""
    ov = overrides.get(task) if overrides else None
    k = auto.switched.bank.tasks.index(task)
    ws = []

    def fwd(x):
        y = _call(auto, x, overrides=ov)
        w = auto.last_weights
        ws.append((w if w.dim() == 2 else w.expand(output_tensor(y).shape[0], -1)).cpu())
        return y

    score = score_loader(fwd, loader, metric, device)
    return score, 100.0 * float(torch.cat(ws)[:, k].mean())


def _avg(out: dict, tasks) -> dict:
    out["avg"] = sum(out[t] for t in tasks) / len(tasks)
    return out


def evaluate_merge(module, result: MergeResult, loaders, overrides=None, metric=None, device=None) -> dict:
    """Per-task scores of a :class:`MergeResult` and ``avg``."""
    module.eval()
    return _avg(
        {t: score_merge(module, result, t, ld, overrides, metric, device) for t, ld in loaders.items()},
        loaders,
    )


def evaluate_switched(model: SwitchedModel, loaders, overrides=None, metric=None, device=None) -> dict:
    """T-Switch per task (``w = e_task``) and ``avg``."""
    model.eval()
    return _avg(
        {t: score_switched(model, t, ld, overrides, metric, device) for t, ld in loaders.items()}, loaders
    )


def evaluate_auto_switch(auto: AutoSwitch, loaders, overrides=None, metric=None, device=None) -> dict:
    """Auto-Switch per task, ``routing_<task>`` (mean weight on the right task, %) and ``avg``."""
    auto.eval()
    out = {}
    for t, ld in loaders.items():
        out[t], out[f"routing_{t}"] = score_auto_switch(auto, t, ld, overrides, metric, device)
    return _avg(out, loaders)
