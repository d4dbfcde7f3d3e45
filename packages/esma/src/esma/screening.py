"""Easy-sample screening: per-class anchor logits ``m_k`` (official ``Train_Gen/Sample_screening.py``,
gjq100/ESMA commit eff2015; the paper's easy-sample approximation of the high-density region), plus the
hard / random anchor controls (ours).

For every training image of target class ``t_k``: ``l_i = CE(f(N(x_i)), t_k)`` and
``g_i = ||d l_i / d N(x_i)||_2``. With ``tau`` the element at index ``q`` of the sorted *distinct*
values (``Sample_screening.find_thresholds``), the easy set is ``{i : g_i < tau_g and l_i < tau_l}``
(strict), and ``m_k = mean_{i in E_k} f(N(x_i))`` (mean **logits**, ``find_target_matches``).

Admission (ours, default): the thresholds and the comparison use the same batched values, so at most
``q`` samples pass. The official ``find_target_matches`` re-runs every sample as a batch of one and
compares that recomputation with the thresholds of the batched pass; float noise between the two can let
the sample that *defines* a threshold fall below it. ``legacy_screening_boundary=True`` reproduces this
(and the anchors are then the batch-of-one logits, as there). An empty easy set crashes the official code
(``torch.stack`` of an empty list); here it falls back to the ``q`` lowest-loss samples with a warning
(ours), flagged in :attr:`EasySampleBank.fallback_used`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "EasySampleBank",
    "class_mean_logits",
    "easy_sample_thresholds",
    "per_sample_loss_gradnorm",
    "screen_banks",
    "screen_easy_samples",
    "select_indices",
    "split_normalizer",
]

KINDS = ("easy", "hard", "random")


def split_normalizer(model: nn.Module) -> tuple[Any, nn.Module]:
    """``(pre, net)`` with ``model(x) == net(pre(x))``: ``pre`` maps [0, 1] images to the network
    input (resize + normalisation of an :class:`~papers_shared.attacks.ImageNetWrapper`), so gradients
    can be taken w.r.t. the *normalised* input as the official code does. Other models: identity."""
    from papers_shared.attacks import ImageNetWrapper

    if isinstance(model, ImageNetWrapper):

        def pre(x: Tensor) -> Tensor:
            if model.input_size is not None and tuple(x.shape[-2:]) != model.input_size:
                align = None if model.interpolation in ("nearest", "area", "nearest-exact") else False
                x = F.interpolate(x, size=model.input_size, mode=model.interpolation, align_corners=align)
            return (x - model.mean.to(x.dtype)) / model.std.to(x.dtype)

        return pre, model.model
    return (lambda x: x), model


def _check_batch(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"images must be a float tensor (B, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf values")
    if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},)")


def per_sample_loss_gradnorm(
    model: nn.Module, x: Tensor, y: Tensor, grad_wrt: str = "normalized"
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``(CE loss, L2 norm of d loss / d input, logits)`` for a batch (model in eval mode).

    ``grad_wrt="normalized"``: gradient w.r.t. the normalised network input (official code);
    ``"pixel"``: w.r.t. the [0, 1] image.
    """
    _check_batch(x, y)
    if grad_wrt not in ("normalized", "pixel"):
        raise ValueError(f"grad_wrt must be 'normalized' or 'pixel', got {grad_wrt!r}")
    pre, net = split_normalizer(model) if grad_wrt == "normalized" else ((lambda t: t), model)
    with torch.enable_grad():
        inp = pre(x.detach()).detach().requires_grad_(True)
        logits = net(inp)
        if logits.ndim != 2:
            raise ValueError(f"model must return logits (B, C), got {tuple(logits.shape)}")
        losses = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(losses.sum(), inp)
    return losses.detach(), grad.flatten(1).norm(p=2, dim=1).detach(), logits.detach()


def easy_sample_thresholds(values: Tensor, q: int) -> float:
    """Element ``q`` (0-based) of the sorted distinct values; ``inf`` when there are ``<= q`` distinct
    values ([ours]: the official code would index out of range)."""
    if q < 0:
        raise ValueError(f"q must be >= 0, got {q}")
    distinct = torch.unique(values.detach().flatten())  # sorted ascending
    return float(distinct[q]) if distinct.numel() > q else math.inf


def select_indices(
    losses: Tensor,
    gradnorms: Tensor,
    q: int,
    kind: str = "easy",
    fallback: str = "lowest_loss",
    generator: torch.Generator | None = None,
    admit: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, bool]:
    """Positions (within one class) used for the anchor, and whether the easy fallback fired.

    ``easy``: ``g < tau_g and l < tau_l``; empty -> the ``q`` lowest-loss samples with a warning
    (``fallback="lowest_loss"``, ours) or ``ValueError`` (``"error"``). ``hard``: the ``q``
    highest-loss samples. ``random``: ``q`` samples drawn without replacement (both ours).
    ``admit=(losses_1, gradnorms_1)``: compare these values (the batch-of-one recomputation) with the
    thresholds computed from ``losses``/``gradnorms`` (the official admission rule).
    """
    if losses.shape != gradnorms.shape or losses.ndim != 1:
        raise ValueError("losses and gradnorms must be 1-D tensors of the same length")
    n = losses.numel()
    if n == 0:
        raise ValueError("a class has no samples to screen")
    if q < 1:
        raise ValueError(f"q must be >= 1, got {q}")
    m = min(q, n)
    if kind == "easy":
        tau_g, tau_l = easy_sample_thresholds(gradnorms, q), easy_sample_thresholds(losses, q)
        al, ag = (losses, gradnorms) if admit is None else admit
        if al.shape != losses.shape or ag.shape != gradnorms.shape:
            raise ValueError("admit values must have the shape of losses and gradnorms")
        keep = (ag < tau_g) & (al < tau_l)
        idx = torch.nonzero(keep).flatten()
        if idx.numel() > 0:
            return idx, False
        if fallback == "error":
            raise ValueError(
                "the easy set is empty (no sample is among the q smallest in both loss and grad)"
            )
        if fallback != "lowest_loss":
            raise ValueError(f"fallback must be 'lowest_loss' or 'error', got {fallback!r}")
        return torch.argsort(losses, stable=True)[:m].sort().values, True
    if kind == "hard":
        return torch.argsort(losses, descending=True, stable=True)[:m].sort().values, False
    if kind == "random":
        return torch.randperm(n, generator=generator)[:m].sort().values, False
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


BANK_FORMAT = "esma-bank-v2"


@dataclass
class EasySampleBank:
    """Anchor logits ``M`` (K, C) for the target classes ``class_ids`` (anchor ``k`` for ``class_ids[k]``).

    ``indices[k]``: dataset indices of the selected samples; ``stats[k]``: the per-sample table
    ``{"index", "loss", "gradnorm"}``; ``class_means``: mean logits over *all* screened samples of
    each class (the stage-1 features ``F``), when available; ``fallback_used``: target indices whose easy
    set was empty (fallback, ours); ``boundary_admitted``: target indices where the official
    batch-of-one rule admitted a sample the batched rule would not (``legacy_screening_boundary``).
    """

    anchors: Tensor
    class_ids: list[int]
    kind: str = "easy"
    q: int = 2
    indices: dict[int, list[int]] = field(default_factory=dict)
    stats: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    class_means: Tensor | None = None
    fallback_used: list[int] = field(default_factory=list)
    boundary_admitted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.anchors, Tensor) or self.anchors.ndim != 2:
            raise ValueError("anchors must be a (K, C) tensor")
        self.class_ids = [int(c) for c in self.class_ids]
        if len(self.class_ids) != self.anchors.shape[0]:
            raise ValueError(f"{len(self.class_ids)} class ids for {self.anchors.shape[0]} anchors")
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"class_ids must be distinct, got {self.class_ids}")
        if not bool(torch.isfinite(self.anchors).all()):
            raise ValueError("anchors contain NaN or inf values")
        self._lookup = {c: i for i, c in enumerate(self.class_ids)}

    @property
    def num_targets(self) -> int:
        return self.anchors.shape[0]

    def anchor(self, k: int) -> Tensor:
        """Anchor logits of target index ``k``."""
        if not 0 <= int(k) < self.num_targets:
            raise IndexError(f"target index {k} outside [0, {self.num_targets})")
        return self.anchors[int(k)]

    def to_index(self, labels: Tensor | Sequence[int], strict: bool = True) -> Tensor:
        """Map class ids to target indices; unknown ids raise ``ValueError`` (``strict``) or map to -1."""
        t = torch.as_tensor(labels)
        if t.is_floating_point():
            raise ValueError(f"labels must be integer class ids, got dtype {t.dtype}")
        out = torch.tensor([self._lookup.get(int(c), -1) for c in t.flatten().tolist()], dtype=torch.long)
        if strict and bool((out < 0).any()):
            bad = sorted({int(c) for c, i in zip(t.flatten().tolist(), out.tolist()) if i < 0})
            raise ValueError(f"labels {bad} are not target classes of this bank ({self.class_ids})")
        return out.view(t.shape).to(t.device)

    # ------------------------------------------------------------------------------------- files
    def _files(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {"anchors": self.anchors.detach().float().cpu()}
        if self.class_means is not None:
            tensors["class_means"] = self.class_means.detach().float().cpu()
        for k, idx in self.indices.items():
            tensors[f"indices.{int(k)}"] = torch.tensor(list(idx), dtype=torch.int64)
        for k, table in self.stats.items():
            tensors[f"stats.{int(k)}.index"] = torch.tensor(list(table["index"]), dtype=torch.int64)
            for col in ("loss", "gradnorm"):
                tensors[f"stats.{int(k)}.{col}"] = torch.tensor(list(table[col]), dtype=torch.float64)
        meta = {
            "class_ids": self.class_ids,
            "kind": self.kind,
            "q": int(self.q),
            "fallback_used": [int(k) for k in self.fallback_used],
            "boundary_admitted": [int(k) for k in self.boundary_admitted],
        }
        return tensors, meta

    @classmethod
    def _from_files(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> EasySampleBank:
        indices: dict[int, list[int]] = {}
        stats: dict[int, dict[str, list[float]]] = {}
        for key, t in tensors.items():
            parts = key.split(".")
            if parts[0] == "indices":
                indices[int(parts[1])] = [int(v) for v in t.tolist()]
            elif parts[0] == "stats":
                col = stats.setdefault(int(parts[1]), {})
                col[parts[2]] = [int(v) for v in t.tolist()] if parts[2] == "index" else t.tolist()
        return cls(
            anchors=tensors["anchors"],
            class_ids=meta["class_ids"],
            kind=meta.get("kind", "easy"),
            q=int(meta.get("q", 2)),
            indices=dict(sorted(indices.items())),
            stats=dict(sorted(stats.items())),
            class_means=tensors.get("class_means"),
            fallback_used=list(meta.get("fallback_used", [])),
            boundary_admitted=list(meta.get("boundary_admitted", [])),
        )

    def save(self, path: str | Path) -> Path:
        """Write the bank as safetensors (tensors) + JSON metadata (ours); :meth:`load` reads it."""
        from .weights import write_weights

        tensors, meta = self._files()
        return write_weights(path, tensors, BANK_FORMAT, **meta)

    @classmethod
    def load(cls, path: str | Path) -> EasySampleBank:
        """Read a bank written by :meth:`save` (or a ``.pt`` bank of version 0.1, ``weights_only=True``).

        A damaged, foreign or code-carrying file raises :class:`~papers_shared.errors.CheckpointError`.
        """
        from papers_shared.errors import CheckpointError

        from .weights import read_weights

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"easy-sample bank not found: {path} (create it with `esma screen`)")

        def legacy(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
            if not isinstance(obj, dict) or obj.get("format") != "esma-bank-v1":
                raise ValueError("not an ESMA easy-sample bank")
            kwargs = {k: v for k, v in obj.items() if k != "format"}
            return cls(**kwargs)._files()

        tensors, meta = read_weights(path, BANK_FORMAT, "ESMA easy-sample bank", legacy=legacy)
        try:
            return cls._from_files(tensors, meta)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{path}: not a valid ESMA easy-sample bank ({exc})") from None


def _iter_batches(data: Dataset | DataLoader | Iterable, batch_size: int) -> Iterable:
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


@torch.no_grad()
def class_mean_logits(
    model: nn.Module, data: Dataset | DataLoader | Iterable, class_ids: Sequence[int], batch_size: int = 64
) -> Tensor:
    """``F_k = mean_{x in D_k} f(x)`` over all samples of class ``class_ids[k]`` (the stage-1 features,
    official ``Train_Gen/train.py:feature_extraction``)."""
    was = model.training
    model.eval()
    sums: dict[int, Tensor] = {}
    counts = {int(c): 0 for c in class_ids}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for x, y in _iter_batches(data, batch_size):
            y = torch.as_tensor(y)
            keep = torch.tensor([int(v) in counts for v in y.tolist()], dtype=torch.bool)
            if not bool(keep.any()):
                continue
            z = model(x[keep].to(device)).float().cpu()
            for c, zi in zip(y[keep].tolist(), z):
                sums[c] = sums.get(c, torch.zeros_like(zi)) + zi
                counts[c] += 1
    finally:
        model.train(was)
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"no samples of classes {missing} in the data")
    return torch.stack([sums[int(c)] / counts[int(c)] for c in class_ids])


def screen_easy_samples(
    model: nn.Module,
    dataset: Dataset | DataLoader | Iterable,
    class_ids: Sequence[int],
    q: int = 2,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    fallback: str = "lowest_loss",
    kind: str = "easy",
    grad_wrt: str = "normalized",
    seed: int = 0,
    progress: bool = False,
    legacy_boundary: bool = False,
) -> EasySampleBank:
    """Screen ``dataset`` (``(image, class_id)`` pairs, deterministic transform) for anchor logits.

    One pass computes per-sample loss, gradient norm and logits for every sample whose label is in
    ``class_ids`` (others are skipped); the bank also stores the class-mean logits (stage-1 features).
    ``dataset`` may be a Dataset (indices are dataset positions) or any re-iterable of batches (indices
    count the samples in iteration order). ``legacy_boundary``: the official admission rule (module
    docstring), which re-runs every sample as a batch of one.
    """
    return screen_banks(
        model, dataset, class_ids, q, batch_size, device, fallback, (kind,), grad_wrt, seed, progress,
        legacy_boundary,
    )[kind]  # fmt: skip


def screen_banks(
    model: nn.Module,
    dataset: Dataset | DataLoader | Iterable,
    class_ids: Sequence[int],
    q: int = 2,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    fallback: str = "lowest_loss",
    kinds: Sequence[str] = KINDS,
    grad_wrt: str = "normalized",
    seed: int = 0,
    progress: bool = False,
    legacy_boundary: bool = False,
) -> dict[str, EasySampleBank]:
    """One screening pass, one bank per kind (``easy`` / ``hard`` / ``random``; the controls are ours)."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    if fallback not in ("lowest_loss", "error"):
        raise ValueError(f"fallback must be 'lowest_loss' or 'error', got {fallback!r}")
    per_class = _screening_pass(model, dataset, class_ids, batch_size, device, grad_wrt, progress)
    if legacy_boundary and "easy" in kinds:
        _single_pass(model, dataset, per_class, batch_size, device, grad_wrt, progress)
    return {k: _bank_from_pass(per_class, class_ids, q, k, fallback, seed) for k in kinds}


def _labelled_batches(dataset, batch_size: int, progress: bool, desc: str):
    it = _iter_batches(dataset, batch_size)
    if iter(it) is it:
        raise ValueError(
            "screening data must be a Dataset, a DataLoader or a list of batches, not an iterator"
        )
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="batch")
    return it


def _screening_pass(model, dataset, class_ids, batch_size, device, grad_wrt, progress) -> dict[int, dict]:
    class_ids = [int(c) for c in class_ids]
    if not class_ids:
        raise ValueError("class_ids must be non-empty")
    device = torch.device(device)
    was = model.training
    model.eval()
    per_class: dict[int, dict[str, list]] = {
        c: {"index": [], "loss": [], "gradnorm": [], "logits": []} for c in class_ids
    }
    pos = 0
    try:
        for batch in _labelled_batches(dataset, batch_size, progress, "screening"):
            x, y = batch[0], torch.as_tensor(batch[1])
            idx = torch.arange(pos, pos + x.shape[0])
            pos += x.shape[0]
            keep = torch.tensor([int(v) in per_class for v in y.tolist()], dtype=torch.bool)
            if not bool(keep.any()):
                continue
            xb, yb = x[keep].to(device), y[keep].to(device)
            loss, gn, z = per_sample_loss_gradnorm(model, xb, yb, grad_wrt)
            for i, c, li, gi, zi in zip(
                idx[keep].tolist(), yb.tolist(), loss.cpu(), gn.cpu(), z.float().cpu()
            ):
                d = per_class[c]
                d["index"].append(i)
                d["loss"].append(float(li))
                d["gradnorm"].append(float(gi))
                d["logits"].append(zi)
    finally:
        model.train(was)
    missing = [c for c, d in per_class.items() if not d["index"]]
    if missing:
        raise ValueError(f"no samples of target classes {missing} found in the screening data")
    return per_class


def _single_pass(model, dataset, per_class, batch_size, device, grad_wrt, progress) -> None:
    """The official ``find_target_matches`` recomputation: every sample again, as a batch of one."""
    device = torch.device(device)
    was = model.training
    model.eval()
    for d in per_class.values():
        d.update(loss1=[], gradnorm1=[], logits1=[])
    try:
        for batch in _labelled_batches(dataset, batch_size, progress, "screening (batch of one)"):
            x, y = batch[0], torch.as_tensor(batch[1])
            for xi, yi in zip(x, y.tolist()):
                d = per_class.get(int(yi))
                if d is None:
                    continue
                loss, gn, z = per_sample_loss_gradnorm(
                    model, xi[None].to(device), torch.tensor([int(yi)], device=device), grad_wrt
                )
                d["loss1"].append(float(loss[0]))
                d["gradnorm1"].append(float(gn[0]))
                d["logits1"].append(z[0].float().cpu())
    finally:
        model.train(was)
    for c, d in per_class.items():
        if len(d["loss1"]) != len(d["loss"]):
            raise ValueError(f"class {c}: the data changed between the two screening passes")


def _bank_from_pass(per_class, class_ids, q, kind, fallback, seed) -> EasySampleBank:
    gen = torch.Generator().manual_seed(seed)
    anchors, means, indices, stats, fell, boundary = [], [], {}, {}, [], []
    for k, c in enumerate(int(c) for c in class_ids):
        d = per_class[c]
        losses = torch.tensor(d["loss"], dtype=torch.float64)
        gns = torch.tensor(d["gradnorm"], dtype=torch.float64)
        logits = torch.stack(d["logits"])
        single = kind == "easy" and "loss1" in d
        admit = None
        if single:
            admit = (
                torch.tensor(d["loss1"], dtype=torch.float64),
                torch.tensor(d["gradnorm1"], dtype=torch.float64),
            )
            logits = torch.stack(d["logits1"])
        sel, used = select_indices(losses, gns, q, kind, fallback, gen, admit=admit)
        if used:
            fell.append(k)
            warnings.warn(
                f"class {c}: no sample is among the {q} smallest in both loss and gradient norm; "
                f"using the {min(q, len(losses))} lowest-loss samples instead",
                RuntimeWarning,
                stacklevel=3,
            )
        if single and not used:
            batched, _ = select_indices(losses, gns, q, kind, fallback, gen)
            if set(sel.tolist()) - set(batched.tolist()):
                boundary.append(k)
        anchors.append(logits[sel].mean(dim=0))
        means.append(torch.stack(d["logits"]).mean(dim=0))
        indices[k] = [d["index"][i] for i in sel.tolist()]
        stats[k] = {"index": d["index"], "loss": d["loss"], "gradnorm": d["gradnorm"]}
    return EasySampleBank(
        anchors=torch.stack(anchors),
        class_ids=[int(c) for c in class_ids],
        kind=kind,
        q=q,
        indices=indices,
        stats=stats,
        class_means=torch.stack(means),
        fallback_used=fell,
        boundary_admitted=boundary,
    )
