"""Data: synthetic non-uniformly sampled signals (the quick reproduction's tasks), WikiText-103 tokens and
the Long Range Arena tasks. Real datasets are read from local files / the HF cache; when absent the
loaders raise :class:`papers_shared.data.DatasetNotFoundError` naming the path and how to get them."""

from smr_ssm.data.lra import LRA_TASKS, LRADataset, load_lra
from smr_ssm.data.nonuniform import (
    GRIDS,
    SamplingTask,
    SignalBank,
    grid_task,
    observed_steps_task,
    regression_batch,
    sample_signals,
    sampling_steps,
)
from smr_ssm.data.wikitext import ByteTokenizer, LMWindows, load_lm_tokens

__all__ = [
    "GRIDS",
    "LRA_TASKS",
    "ByteTokenizer",
    "LMWindows",
    "LRADataset",
    "SamplingTask",
    "SignalBank",
    "grid_task",
    "load_lm_tokens",
    "load_lra",
    "observed_steps_task",
    "regression_batch",
    "sample_signals",
    "sampling_steps",
]
