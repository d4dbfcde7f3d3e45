"""Data: synthetic non-uniformly sampled signals (spec §8), WikiText-103 tokens (spec §5) and the Long
Range Arena tasks (spec §5). Real datasets are read from local files / the HF cache; when absent the
loaders raise :class:`papers_shared.data.DatasetNotFoundError` naming the path and how to get them."""

from smr_ssm.data.lra import LRA_TASKS, LRADataset, load_lra
from smr_ssm.data.nonuniform import GRIDS, regression_batch, sample_signals, sampling_steps
from smr_ssm.data.wikitext import ByteTokenizer, LMWindows, load_lm_tokens

__all__ = [
    "GRIDS",
    "LRA_TASKS",
    "ByteTokenizer",
    "LMWindows",
    "LRADataset",
    "load_lm_tokens",
    "load_lra",
    "regression_batch",
    "sample_signals",
    "sampling_steps",
]
