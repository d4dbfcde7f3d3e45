"""Long Range Arena tasks (the paper's LRA table), read from the LRA release (``lra_release.gz`` of
google-research/long-range-arena, unpacked), CIFAR-10 and IMDb.

Expected layout under ``data_dir`` (the unpacked ``lra_release`` folder):

* ``listops``: ``listops-1000/basic_{train,val,test}.tsv`` (columns ``Source``, ``Target``);
* ``retrieval``: ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (label, id1, id2, text1, text2);
* ``pathfinder``: ``pathfinder32/curv_contour_length_14/{metadata/*.npy, imgs/...}``;
* ``pathx``: ``pathfinder128/curv_contour_length_14/...``;
* ``image``: CIFAR-10 (``cifar-10-batches-py``) under ``data_dir`` (torchvision layout);
* ``text``: IMDb from the HF cache (``stanfordnlp/imdb``) or a ``save_to_disk`` copy at ``data_dir/imdb``.

Tokenisation: ListOps uses the LRA tokens (``]`` renamed, parentheses dropped) plus an end token;
Text and Retrieval are byte-level (ids ``3 + byte``, 0 pad, 2 end). Images are grey levels scaled to
``[-1, 1]``, one value per pixel, row-major (``(L, 1)`` per sample). Processed tensors are cached in
``data_dir/cache``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from papers_shared.checkpoints import atomic_save
from papers_shared.data import DatasetNotFoundError
from smr_ssm.data.cache import load_cache

__all__ = ["LISTOPS_VOCAB", "LRA_TASKS", "LRADataset", "encode_bytes", "listops_tokens", "load_lra"]

_RELEASE = "download lra_release.gz from https://github.com/google-research/long-range-arena, unpack it (tar -xzf) and point data_dir at the unpacked lra_release folder"

#: Task facts: sequence length, classes, encoder and vocabulary (``None`` for pixel inputs).
LRA_TASKS: dict[str, dict] = {
    "listops": {
        "max_length": 2048,
        "num_labels": 10,
        "encoder": "embedding",
        "vocab_size": 18,
        "dual": False,
    },
    "text": {"max_length": 4096, "num_labels": 2, "encoder": "embedding", "vocab_size": 259, "dual": False},
    "retrieval": {
        "max_length": 4000,
        "num_labels": 2,
        "encoder": "embedding",
        "vocab_size": 259,
        "dual": True,
    },
    "image": {"max_length": 1024, "num_labels": 10, "encoder": "linear", "vocab_size": None, "dual": False},
    "pathfinder": {
        "max_length": 1024,
        "num_labels": 2,
        "encoder": "linear",
        "vocab_size": None,
        "dual": False,
    },
    "pathx": {"max_length": 16384, "num_labels": 2, "encoder": "linear", "vocab_size": None, "dual": False},
}

#: ``<pad>``, ``<unk>``, ``<eos>``, the four operators, the closing bracket (renamed ``X``), digits.
LISTOPS_VOCAB = ["<pad>", "<unk>", "<eos>", "[MIN", "[MAX", "[MED", "[SM", "X", *[str(i) for i in range(10)]]
_PAD, _UNK, _EOS = 0, 1, 2


@dataclass
class LRADataset(torch.utils.data.Dataset):
    """Pre-tokenised split: ``inputs`` ``(N, L)`` long (tokens) or ``(N, L, 1)`` float (pixels), or
    ``(N, 2, L)`` for retrieval; ``mask`` valid positions; ``labels`` ``(N,)``."""

    inputs: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.inputs[idx]
        key = "input_values" if x.is_floating_point() else "input_ids"
        return {key: x, "attention_mask": self.mask[idx], "labels": self.labels[idx]}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batch(torch.tensor([i]))


def listops_tokens(source: str) -> list[int]:
    """LRA ListOps tokenisation: ``]`` -> ``X``, parentheses dropped, whitespace split, end token."""
    index = {t: i for i, t in enumerate(LISTOPS_VOCAB)}
    toks = source.translate({ord("]"): ord("X"), ord("("): None, ord(")"): None}).split()
    return [index.get(t, _UNK) for t in toks] + [_EOS]


def encode_bytes(text: str) -> list[int]:
    return [3 + b for b in text.encode("utf-8")] + [_EOS]


def _pad(seqs: list[list[int]], L: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((len(seqs), L), _PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        s = s[:L]
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return out, mask


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetNotFoundError(what, path, _RELEASE + ".")
    return path


def _listops(root: Path, split: str, L: int) -> LRADataset:
    path = _require(root / "listops-1000" / f"basic_{split}.tsv", f"LRA ListOps ({split})")
    seqs, labels = [], []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            seqs.append(listops_tokens(row["Source"]))
            labels.append(int(row["Target"]))
    x, m = _pad(seqs, L)
    return LRADataset(x, m, torch.tensor(labels))


def _retrieval(root: Path, split: str, L: int) -> LRADataset:
    name = {"train": "train", "val": "eval", "test": "test"}[split]
    path = _require(root / "tsv_data" / f"new_aan_pairs.{name}.tsv", f"LRA Retrieval/AAN ({split})")
    a, b, labels = [], [], []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if len(row) < 5:
                continue
            labels.append(int(float(row[0])))
            a.append(encode_bytes(row[3]))
            b.append(encode_bytes(row[4]))
    xa, ma = _pad(a, L)
    xb, mb = _pad(b, L)
    return LRADataset(torch.stack([xa, xb], 1), torch.stack([ma, mb], 1), torch.tensor(labels))


def _text(root: Path, split: str, L: int, val_fraction: float, split_seed: int) -> LRADataset:
    local = root / "imdb"
    if local.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(local))
    else:
        from papers_shared.data.hf import load_hf_dataset

        ds = load_hf_dataset("stanfordnlp/imdb")
    part = ds["test"] if split == "test" else ds["train"]
    seqs = [encode_bytes(t) for t in part["text"]]
    x, m = _pad(seqs, L)
    data = LRADataset(x, m, torch.tensor(part["label"]))
    if split == "test" or val_fraction <= 0:
        return data
    return _split_off(data, split, val_fraction, split_seed)


def _split_off(data: LRADataset, split: str, fraction: float, seed: int) -> LRADataset:
    """Deterministic train/val split of one labelled set."""
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(fraction * n))
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    return LRADataset(data.inputs[idx], data.mask[idx], data.labels[idx])


def _image(root: Path, split: str, val_fraction: float, split_seed: int) -> LRADataset:
    from torchvision import transforms

    from papers_shared.data import cifar

    tf = transforms.Compose([transforms.Grayscale(), transforms.ToTensor()])
    ds = cifar(root, "cifar10", train=split != "test", transform=tf, download_key=None)
    images = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, 1, 32, 32)
    labels = torch.tensor(ds.targets)
    x = (images.flatten(1) * 2 - 1).unsqueeze(-1)
    data = LRADataset(x, torch.ones(x.shape[:2], dtype=torch.bool), labels)
    return data if split == "test" else _split_off(data, split, val_fraction, split_seed)


def _pathfinder(root: Path, split: str, resolution: int, split_seed: int) -> LRADataset:
    from PIL import Image

    base = _require(
        root / f"pathfinder{resolution}" / "curv_contour_length_14", f"LRA Pathfinder-{resolution}"
    )
    meta_files = sorted(
        (base / "metadata").glob("*.npy"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0
    )
    if not meta_files:
        raise DatasetNotFoundError(f"LRA Pathfinder-{resolution} metadata", base / "metadata", _RELEASE + ".")
    images, labels = [], []
    for meta in meta_files:
        for line in meta.read_text().splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            path = base / fields[0] / fields[1]
            if not path.is_file() or path.stat().st_size == 0:
                continue
            with Image.open(path) as img:
                arr = torch.frombuffer(bytearray(img.convert("L").tobytes()), dtype=torch.uint8)
            images.append(arr)
            labels.append(int(fields[3]))
    x = torch.stack(images).float().div(255.0).mul(2).sub(1).unsqueeze(-1)
    y = torch.tensor(labels)
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = n_test = int(0.1 * n)
    parts = {"val": perm[:n_val], "test": perm[n_val : n_val + n_test], "train": perm[n_val + n_test :]}
    idx = parts[split]
    return LRADataset(x[idx], torch.ones(len(idx), x.shape[1], dtype=torch.bool), y[idx])


def load_lra(
    task: str,
    data_dir: str | Path,
    split: str = "train",
    max_length: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 42,
    cache: bool = True,
) -> LRADataset:
    """One split (``"train"``, ``"val"``, ``"test"``) of an LRA task; clear error when the files are absent."""
    if task not in LRA_TASKS:
        raise ValueError(f"unknown LRA task {task!r}; valid: {sorted(LRA_TASKS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    root = Path(data_dir).expanduser()
    L = max_length or LRA_TASKS[task]["max_length"]
    cache_path = root / "cache" / f"{task}-{split}-L{L}-v{val_fraction}-s{split_seed}.pt"
    cached = load_cache(cache_path) if cache else None
    if isinstance(cached, dict) and set(cached) == {"inputs", "mask", "labels"}:
        return LRADataset(**cached)
    if task not in ("text", "image") and not root.is_dir():  # image/text name their own sources
        raise DatasetNotFoundError(f"LRA data folder for {task!r}", root, _RELEASE + ".")
    if task == "listops":
        data = _listops(root, split, L)
    elif task == "retrieval":
        data = _retrieval(root, split, L)
    elif task == "text":
        data = _text(root, split, L, val_fraction, split_seed)
    elif task == "image":
        data = _image(root, split, val_fraction, split_seed)
    else:
        data = _pathfinder(root, split, 32 if task == "pathfinder" else 128, split_seed)
    if cache and root.is_dir():
        atomic_save({"inputs": data.inputs, "mask": data.mask, "labels": data.labels}, cache_path)
    return data
