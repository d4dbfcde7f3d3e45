"""System2 alone: the multimodal LLM over **all** class names of the dataset, unparseable answers count
as wrong (official ``utils/gpt4ref.py:InferenceGPT.Inference``, commit 8c8ad10; there MiniGPT-4)."""

from __future__ import annotations

import torch

from icl_vmf.data import StreamData, iterate_batches
from icl_vmf.system2 import System2

__all__ = ["system2_zero_shot"]


@torch.no_grad()
def system2_zero_shot(
    system2: System2, data: StreamData, batch_size: int = 8, max_per_task: int = 0
) -> dict[str, float]:
    """System2 alone: every test image with **all** class names as candidates; an answer
    that maps to no single class counts as wrong. Returns accuracy and the parsed fraction."""
    n = correct = parsed = 0
    names = list(data.class_names)
    for test in data.test_sets:
        seen = 0
        for x, y in iterate_batches(test, batch_size, shuffle=False):
            if max_per_task and seen >= max_per_task:
                break
            x, y = (
                x[: max_per_task - seen] if max_per_task else x,
                y[: max_per_task - seen] if max_per_task else y,
            )
            seen += y.numel()
            out = system2.choose([im for im in x], [names] * len(y), [names[int(c)] for c in y])
            for c, t in zip(out.choices, y.tolist()):
                n += 1
                parsed += c is not None
                correct += c is not None and c == t
    return {
        "accuracy": correct / n if n else float("nan"),
        "parsed_fraction": parsed / n if n else float("nan"),
        "n": n,
    }
