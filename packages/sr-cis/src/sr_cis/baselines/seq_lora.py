"""``SeqLoRA``: one LoRA and one growing linear head fine-tuned on each task in turn (the lower bound of
per-task memories; ours, as in the PTM-CIL literature's sequential fine-tuning baseline)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sr_cis.baselines.common import evaluate_predictor
from sr_cis.config import SRCISConfig
from sr_cis.data import dataset_labels
from sr_cis.trainer import HeadOnFeatures, fit

__all__ = ["SeqLoRA"]


class SeqLoRA:
    """One LoRA adapter ``"seq"`` and a growing linear head, trained on each task in turn.

    New head rows start from the class means of the current features written as NCM weights and biases
    (``init="prototype"``, like the STM heads, so that the comparison isolates forgetting) or at random
    (``init="random"``).
    """

    def __init__(
        self,
        small_model,
        cfg: SRCISConfig | None = None,
        epochs: int | None = None,
        device="cpu",
        init: str = "prototype",
        seed: int = 0,
    ):
        if init not in ("prototype", "random"):
            raise ValueError(f"init must be 'prototype' or 'random', got {init!r}")
        self.init = init
        self.cfg = cfg or SRCISConfig()
        self.model = small_model.to(device)
        self.device = torch.device(device)
        self.epochs = self.cfg.stm.epochs if epochs is None else epochs
        self.seed = int(seed)
        self.model.add_task_adapter("seq", seed=self.seed * 1_000_003 + 300_000)
        self.classes: list[int] = []
        self.head: nn.Linear | None = None

    def _grow(self, new: list[int], protos: torch.Tensor | None, task_id: int) -> None:
        """Add rows for ``new`` classes: NCM-as-linear from ``protos`` (like the STM heads) or random."""
        old = self.head
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + 700_000 + task_id)
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
        if self.init == "prototype":  # class means of the current (shared) adapter's features
            sums = {c: torch.zeros(self.model.dim) for c in new}
            with torch.no_grad():
                for xb, yb in DataLoader(train, batch_size=self.cfg.fast.batch_size):
                    h = self.model.features(xb.to(self.device), "seq").cpu()
                    for c in new:
                        sums[c] += h[yb == c].sum(0)
            protos = torch.stack([sums[c] / int((labels == c).sum()) for c in new])
        self._grow(new, protos, task_id)
        col = torch.full((max(self.classes) + 1,), -1, dtype=torch.long)
        col[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        s = self.cfg.stm
        self.model.set_adapter("seq")

        def loss_fn(model, batch):
            xb, yb = batch
            return F.cross_entropy(model(xb.to(self.device)), col[yb].to(self.device))

        fit(
            HeadOnFeatures(self.model, self.head, "seq"),
            train,
            loss_fn,
            epochs=self.epochs,
            batch_size=s.batch_size,
            optimizer=lambda ps: torch.optim.Adam(ps, lr=s.lr, weight_decay=s.weight_decay),
            seed=self.seed * 1_000_003 + task_id,
            progress=self.cfg.progress,
            desc=f"SeqLoRA task {task_id}",
        )
        self.model.freeze_all()
        self.head.requires_grad_(False)

    def after_task(self, t: int, num_tasks: int) -> None:
        return None

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.model.features(x.to(self.device), "seq"))
        return torch.tensor(self.classes)[z.argmax(1).cpu()]

    def evaluate(self, test: Dataset, task_of_class=None, max_samples=None) -> dict:
        return evaluate_predictor(
            self.predict, test, task_of_class, self.cfg.fast.batch_size, max_samples
        ) | {
            "passes": 1,
            "storage": {"lora_bytes": self.model.adapter_bytes("seq"), "regions": 1},
        }
