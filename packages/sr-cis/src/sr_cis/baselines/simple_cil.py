"""``SimpleCIL``: nearest class mean (cosine) on the frozen pre-trained features, no training (Zhou et al.,
"Revisiting Class-Incremental Learning with Pre-Trained Models", the PTM-CIL reference in LAMDA-PILOT)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from sr_cis.baselines.common import evaluate_predictor
from sr_cis.config import SRCISConfig
from sr_cis.prototypes import PrototypeHead

__all__ = ["SimpleCIL"]


class SimpleCIL:
    """Class means of the frozen backbone's features; prediction by the nearest mean (``norm``)."""

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
        for xb, yb in DataLoader(train, batch_size=self.cfg.fast.batch_size):
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
        return evaluate_predictor(
            self.predict, test, task_of_class, self.cfg.fast.batch_size, max_samples
        ) | {
            "passes": 1,
            "storage": {"head_bytes": 4 * sum(p.numel() for p in self.protos.values()), "regions": 1},
        }
