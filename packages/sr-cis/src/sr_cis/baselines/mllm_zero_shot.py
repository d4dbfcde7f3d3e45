"""``MLLMZeroShot``: the large model alone, choosing among every seen class name (ours; the ICL code's
``utils/gpt4ref.py`` asks its large model over all class names the same way)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import Dataset

from sr_cis.baselines.common import evaluate_predictor
from sr_cis.data import dataset_labels
from sr_cis.slow_path import SlowPath

__all__ = ["MLLMZeroShot"]


class MLLMZeroShot:
    """Log-likelihood choice of the large model over every seen class name (never abstains)."""

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
        return evaluate_predictor(self.predict, test, task_of_class, self.batch_size, max_samples) | {
            "passes": 0
        }
