"""Baselines of spec §4, all driven by the same runner (:func:`sr_cis.experiment.run_method`).

* :class:`SeqLoRA` - one LoRA + one growing linear head fine-tuned sequentially (lower bound).
* :class:`SimpleCIL` - frozen ViT + class-mean prototypes (cosine), no training.
* :class:`MLLMZeroShot` - the large model alone, log-likelihood choice over every seen class name.
* SR-CIS variants (:func:`variant_config`): ``per_task_lora`` (STM only: no restructuring, no MLLM),
  ``sr_cis_fast_only`` (no CA-OAD/MLLM), ``sr_cis_no_text`` (class-name prompts), ``sr_cis_random_route``
  (20 % routed at random).
* Prompt / LoRA PTM baselines (L2P, DualPrompt, CODA-Prompt, InfLoRA) are not re-implemented: run them with
  LAMDA-PILOT or the InfLoRA repository and import their numbers with :func:`import_results_table`.
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sr_cis.config import SRCISConfig
from sr_cis.data import dataset_labels
from sr_cis.prototypes import PrototypeHead
from sr_cis.slow_path import SlowPath
from sr_cis.system import summarize

__all__ = [
    "EXTERNAL_BASELINES",
    "MLLMZeroShot",
    "SR_CIS_VARIANTS",
    "SeqLoRA",
    "SimpleCIL",
    "import_results_table",
    "variant_config",
]

SR_CIS_VARIANTS = ("sr_cis", "per_task_lora", "sr_cis_fast_only", "sr_cis_no_text", "sr_cis_random_route")
EXTERNAL_BASELINES = ("l2p", "dualprompt", "coda_prompt", "inflora")


def variant_config(cfg: SRCISConfig, name: str) -> SRCISConfig:
    """The config of an SR-CIS ablation named in spec §4 (a modified deep copy)."""
    out = copy.deepcopy(cfg)
    if name == "sr_cis":
        pass
    elif name == "per_task_lora":
        out.restructure.period = None
        out.caoad.enabled = False
        out.slow.enabled = False
    elif name == "sr_cis_fast_only":
        out.caoad.enabled = False
        out.slow.enabled = False
    elif name == "sr_cis_no_text":
        out.text.describe_mode = "class_name_only"
    elif name == "sr_cis_random_route":
        out.caoad.random_fraction = 0.2
    else:
        raise ValueError(f"unknown SR-CIS variant {name!r}; choose from {SR_CIS_VARIANTS}")
    return out


def _loader(ds: Dataset, bs: int, shuffle: bool, gen=None):
    return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen)


class SeqLoRA:
    """One LoRA adapter and a growing linear head trained on each task in turn (spec §4.1)."""

    def __init__(
        self,
        small_model,
        cfg: SRCISConfig | None = None,
        epochs: int | None = None,
        device="cpu",
        init="prototype",
    ):
        if init not in ("prototype", "random"):
            raise ValueError(f"init must be 'prototype' or 'random', got {init!r}")
        self.init = init
        self.cfg = cfg or SRCISConfig()
        self.model = small_model.to(device)
        self.device = torch.device(device)
        self.epochs = self.cfg.stm.epochs if epochs is None else epochs
        self.model.add_task_adapter("seq")
        self.classes: list[int] = []
        self.head: nn.Linear | None = None

    def _grow(self, new: list[int], protos: torch.Tensor | None = None) -> None:
        """Add rows for ``new`` classes: NCM-as-linear from ``protos`` (like the STM heads) or random."""
        old = self.head
        head = nn.Linear(self.model.dim, len(self.classes) + len(new)).to(self.device)
        n_old = 0 if old is None else old.out_features
        with torch.no_grad():
            if old is not None:
                head.weight[:n_old] = old.weight
                head.bias[:n_old] = old.bias
            if protos is not None:
                p = protos.to(head.weight)
                head.weight[n_old:] = p
                head.bias[n_old:] = -0.5 * (p * p).sum(1)
        self.head = head
        self.classes += new

    def train_task(self, train: Dataset, task_id: int = 0, class_names: Mapping[int, str] | None = None):
        labels = dataset_labels(train)
        new = [c for c in sorted(torch.unique(labels).tolist()) if c not in self.classes]
        protos = None
        if self.init == "prototype":  # streamed class means of the current (shared) adapter's features
            sums = {c: torch.zeros(self.model.dim) for c in new}
            with torch.no_grad():
                for xb, yb in _loader(train, self.cfg.fast.batch_size, False):
                    h = self.model.features(xb.to(self.device), "seq").cpu()
                    for c in new:
                        sums[c] += h[yb == c].sum(0)
            protos = torch.stack([sums[c] / int((labels == c).sum()) for c in new])
        self._grow(new, protos)
        col = torch.full((max(self.classes) + 1,), -1, dtype=torch.long)
        col[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        s = self.cfg.stm
        self.model.set_adapter("seq")
        params = self.model.trainable_parameters("seq") + list(self.head.parameters())
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        self.model.train()
        for _ in tqdm(
            range(self.epochs), desc=f"SeqLoRA task {task_id}", disable=not self.cfg.progress, leave=False
        ):
            for xb, yb in _loader(train, s.batch_size, True, gen):
                z = self.head(self.model.features(xb.to(self.device), "seq"))
                loss = F.cross_entropy(z, col[yb].to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.model.eval()
        self.model.freeze_all()

    def after_task(self, t: int, num_tasks: int) -> None:
        return None

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.model.features(x.to(self.device), "seq"))
        return torch.tensor(self.classes)[z.argmax(1).cpu()]

    def evaluate(self, test: Dataset, task_of_class=None, max_samples=None) -> dict:
        return _eval_simple(self.predict, test, task_of_class, self.cfg.fast.batch_size, max_samples) | {
            "passes": 1,
            "storage": {"lora_bytes": self.model.adapter_bytes("seq"), "regions": 1},
        }


def _eval_simple(predict, test, task_of_class, bs, max_samples=None) -> dict:
    ys, ps = [], []
    seen = 0
    for xb, yb in _loader(test, bs, False):
        if max_samples is not None and seen >= max_samples:
            break
        ys.append(yb)
        ps.append(predict(xb))
        seen += xb.shape[0]
    y, p = torch.cat(ys), torch.cat(ps)
    return summarize(y, p, p, torch.zeros_like(y, dtype=torch.bool), task_of_class)


class SimpleCIL:
    """Nearest class mean (cosine) on frozen features; no training (spec §4.4)."""

    def __init__(self, small_model, cfg: SRCISConfig | None = None, device="cpu", norm: str = "cosine"):
        self.cfg = cfg or SRCISConfig()
        self.model = small_model.to(device)
        self.device = torch.device(device)
        self.norm = norm
        self.protos: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def train_task(self, train: Dataset, task_id: int = 0, class_names=None):
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for xb, yb in _loader(train, self.cfg.fast.batch_size, False):
            h = self.model.features(xb.to(self.device), None).cpu()
            for c in torch.unique(yb).tolist():
                m = yb == c
                sums[c] = sums.get(c, 0) + h[m].sum(0)
                counts[c] = counts.get(c, 0) + int(m.sum())
        for c in sums:
            self.protos[c] = sums[c] / counts[c]

    def after_task(self, t: int, num_tasks: int) -> None:
        return None

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        classes = sorted(self.protos)
        head = PrototypeHead.from_prototypes(
            torch.stack([self.protos[c] for c in classes]), classes, self.norm
        )
        z = head(self.model.features(x.to(self.device), None).cpu())
        return torch.tensor(classes)[z.argmax(1)]

    def evaluate(self, test: Dataset, task_of_class=None, max_samples=None) -> dict:
        return _eval_simple(self.predict, test, task_of_class, self.cfg.fast.batch_size, max_samples) | {
            "passes": 1,
            "storage": {"head_bytes": 4 * sum(p.numel() for p in self.protos.values()), "regions": 1},
        }


class MLLMZeroShot:
    """The large model alone: log-likelihood choice over every seen class name (spec §4.3)."""

    def __init__(self, large_model, class_names: Mapping[int, str], batch_size: int = 32):
        self.slow = SlowPath(large_model, class_names, answer_mode="loglik")
        self.classes: list[int] = []
        self.batch_size = batch_size

    def train_task(self, train: Dataset, task_id: int = 0, class_names=None):
        self.classes = sorted(set(self.classes) | set(torch.unique(dataset_labels(train)).tolist()))

    def after_task(self, t: int, num_tasks: int) -> None:
        return None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.slow.zero_shot(x, self.classes)

    def evaluate(self, test: Dataset, task_of_class=None, max_samples=None) -> dict:
        return _eval_simple(self.predict, test, task_of_class, self.batch_size, max_samples) | {"passes": 0}


def import_results_table(path: str | Path) -> list[dict]:
    """Rows ``{method, dataset, setting, final_acc, avg_acc}`` from a CSV or JSON results table exported from
    LAMDA-PILOT / InfLoRA runs (spec §4.5). Accuracies are percentages."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results table not found: {p}")
    if p.suffix == ".json":
        rows = json.loads(p.read_text())
        if isinstance(rows, dict):
            rows = rows.get("rows", [])
    elif p.suffix == ".csv":
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ValueError(f"results table must be .csv or .json, got {p.suffix!r}")
    need = {"method", "dataset", "final_acc"}
    out = []
    for i, r in enumerate(rows):
        missing = need - set(r)
        if missing:
            raise ValueError(f"row {i} of {p} lacks columns {sorted(missing)} (need {sorted(need)})")
        row = {
            "method": str(r["method"]),
            "dataset": str(r["dataset"]),
            "setting": str(r.get("setting", "standard")),
            "final_acc": float(r["final_acc"]),
            "avg_acc": float(r["avg_acc"]) if r.get("avg_acc") not in (None, "") else None,
        }
        if not 0.0 <= row["final_acc"] <= 100.0:
            raise ValueError(f"row {i}: final_acc {row['final_acc']} is not a percentage")
        out.append(row)
    return out
