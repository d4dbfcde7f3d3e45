"""Loading: weights (local files, folders or cached hub ids), the paper tables' datasets, and the offline
digits domains of the quick reproduction.

Nothing is downloaded at run time. Where an argument names weights, its *form* decides whether it is a
local path or a hub id (:func:`classify_source`), and the error says which was assumed: a missing local
file is "file not found: <path>", an uncached hub id names the download command. Datasets go through
``papers_shared.data.hf.load_hf_dataset`` (a clear :class:`DatasetNotFoundError` when not cached).
Vision uses Hugging Face ``transformers`` CLIP checkpoints (FusionBench's
``tanganke/clip-vit-base-patch32_<task>`` fine-tuned vision towers); the official pickled open_clip
modules are never unpickled (see README, Deviations).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from papers_shared.checkpoints import load_checkpoint, load_safetensors
from papers_shared.data.hf import load_hf_dataset, require_hub_model
from papers_shared.errors import InputError
from t_switch.config import DIGIT_DOMAINS, GLUE_TASKS

__all__ = [
    "DEFAULT_VISION_DATASETS",
    "DOMAINS",
    "GLUE_KEYS",
    "GLUE_TASKS",
    "WEIGHT_SUFFIXES",
    "classify_source",
    "digits_domains",
    "load_dataset",
    "load_state",
    "resolve_model",
    "subset",
    "text_loader",
    "vision_loader",
]

DOMAINS = DIGIT_DOMAINS
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

DEFAULT_VISION_DATASETS = {
    "SUN397": "tanganke/sun397",
    "Cars": "tanganke/stanford_cars",
    "RESISC45": "tanganke/resisc45",
    "EuroSAT": "tanganke/eurosat",
    "SVHN": "ufldl-stanford/svhn:cropped_digits",
    "GTSRB": "tanganke/gtsrb",
    "MNIST": "ylecun/mnist",
    "DTD": "tanganke/dtd",
}
GLUE_KEYS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ weights
def classify_source(arg: str | os.PathLike) -> tuple[bool, str]:
    """``(is_local, why)``: whether ``arg`` names a local path or a hub id, judged by its form.

    Local when it exists, is absolute or explicitly relative (``/``, ``./``, ``../``, ``~``), ends in a
    weights suffix (``.pt``, ``.safetensors``, ...), has more than one ``/`` or is not a valid hub id;
    otherwise (``name`` or ``owner/name``) a hub id.
    """
    text = str(arg)
    if Path(text).expanduser().exists():
        return True, "it exists on disk"
    if text.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(text):
        return True, "it is an absolute or explicitly relative path"
    suffix = Path(text).suffix.lower()
    if suffix in WEIGHT_SUFFIXES:
        return True, f"it ends in {suffix}"
    if text.count("/") > 1 or "\\" in text:
        return True, "it has more than one '/' (a hub id is owner/name)"
    if not _HUB_ID.match(text):
        return True, "it is not of the form owner/name of a hub id"
    return False, "it has the form owner/name of a hub id"


def resolve_model(arg: str, subfolder: str = "") -> str:
    """A local folder/file as is, or the cached snapshot of a hub id (nothing is downloaded).

    A missing local path raises :class:`FileNotFoundError` ("file not found: <path>", saying why it was
    read as a path); an uncached hub id raises ``DatasetNotFoundError`` naming the download command.
    """
    local, why = classify_source(arg)
    if local:
        path = Path(arg).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"file not found: {path} (read as a local path because {why}; a hub id has the form owner/name)"
            )
        root = str(path)
    else:
        root = require_hub_model(arg)
    if subfolder:
        sub = Path(root) / subfolder
        if not sub.exists():
            raise FileNotFoundError(f"file not found: {sub} (sub-folder {subfolder!r} of {arg})")
        return str(sub)
    return root


def _flat_tensors(obj, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"{path}: entries {bad[:5]} are not tensors; give a flat state dict of tensors")
    return dict(obj)


def load_state(src: str) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file, a ``torch.save`` file of tensors (``.pt``/``.bin``/...,
    loaded with ``weights_only=True``), a ``transformers`` folder, or a cached hub id."""
    root = Path(resolve_model(src))
    if root.is_file():
        if root.suffix == ".safetensors":
            return load_safetensors(root)[0]
        return _flat_tensors(load_checkpoint(root), root)
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(root)).state_dict()


# ----------------------------------------------------------------------------------------------- datasets
def load_dataset(spec: str, split: str):
    """``"owner/name"``, ``"owner/name:config"`` or a local folder -> a ``datasets`` split (cached only)."""
    if ":" in spec and not Path(spec).exists():
        path, name = spec.split(":", 1)
        return load_hf_dataset(path, name, split=split)
    return load_hf_dataset(spec, split=split)


def subset(ds, n: int):
    """The first ``n`` examples (all when ``n`` is 0)."""
    return ds.select(range(min(n, len(ds)))) if n and n > 0 else ds


def vision_loader(
    ds, processor, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """``(pixel_values, label)`` batches of an image dataset through a CLIP image processor."""
    img_col = next(c for c in ("image", "img", "jpg") if c in ds.column_names)
    lab_col = next(c for c in ("label", "labels") if c in ds.column_names)

    def collate(rows):
        px = processor(images=[r[img_col].convert("RGB") for r in rows], return_tensors="pt")["pixel_values"]
        return px, torch.tensor([r[lab_col] for r in rows])

    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g, num_workers=num_workers
    )


def text_loader(ds, tokenizer, task: str, batch_size: int, max_length: int) -> DataLoader:
    """``({input_ids, attention_mask}, label)`` batches of a GLUE task (float labels for STS-B)."""
    k1, k2 = GLUE_KEYS[task]

    def collate(rows):
        a = [r[k1] for r in rows]
        b = [r[k2] for r in rows] if k2 else None
        enc = tokenizer(a, b, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        y = torch.tensor([r["label"] for r in rows], dtype=torch.float if task == "stsb" else torch.long)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, y

    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


# -------------------------------------------------------------------------------------- digits (offline)
def digits_domains(val_fraction: float = 0.2) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
    """``{"train"|"val"|"test": {domain: (x [N, 64], y [N])}}`` on scikit-learn's digits (ours).

    Test is a stratified 30 % of the 1797 images (seed 0); ``val_fraction`` of the rest is held out for
    choosing the router and is used for nothing else. Domains: horizontal flip, intensity inversion
    ``1 - x``, a fixed pixel permutation (seed 1234) and a 90-degree rotation, plus the original and a
    vertical flip that only the generalist's pre-training sees.
    """
    from papers_shared.data import load_digits_tensors, stratified_split

    x, y = load_digits_tensors()  # [N, 1, 8, 8] in [0, 1]
    tr, te = stratified_split(y, test_frac=0.3, seed=0)
    fit, val = stratified_split(y[tr], test_frac=val_fraction, seed=0)
    splits = {"train": tr[fit], "val": tr[val], "test": te}
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1234))
    fns = {
        "original": lambda a: a,
        "vflip": lambda a: a.flip(-2),
        "hflip": lambda a: a.flip(-1),
        "invert": lambda a: 1.0 - a,
        "permute": lambda a: a.reshape(a.shape[0], -1)[:, perm].reshape(a.shape),
        "rot90": lambda a: torch.rot90(a, 1, (-2, -1)),
    }
    return {
        split: {d: (f(x[idx]).reshape(len(idx), -1).contiguous(), y[idx]) for d, f in fns.items()}
        for split, idx in splits.items()
    }
