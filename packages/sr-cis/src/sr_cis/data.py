"""Dataset helpers and the benchmark splits (paper: CIFAR100, ImageNet-R, DomainNet, standard and few-shot;
splits follow InfLoRA / LAMDA-PILOT) plus the offline digits data of the quick run.

Real loaders never download silently and never fall back to fake data: absent files raise
:class:`papers_shared.data.DatasetNotFoundError` naming the path and how to get them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from papers_shared.data import DatasetNotFoundError
from papers_shared.sessions import IncrementalSplit, task_sessions

__all__ = [
    "CILBenchmark",
    "DIGIT_NAMES",
    "class_images",
    "dataset_labels",
    "eval_subset",
    "few_shot_indices",
    "hold_out_pretrain",
    "in_memory",
    "load_benchmark",
    "stack_dataset",
]

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def dataset_labels(ds: Dataset) -> torch.Tensor:
    """Integer labels of every sample (TensorDataset, ``.targets``, Subset chains, or by iteration)."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].long()
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets).long()
    if hasattr(ds, "samples"):
        return torch.tensor([s[1] for s in ds.samples])
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])


def class_images(
    ds: Dataset, labels: torch.Tensor, class_id: int, n: int | None, gen: torch.Generator
) -> torch.Tensor:
    """Up to ``n`` images of ``class_id`` sampled uniformly without replacement (seeded), ``[m, C, H, W]``."""
    idx = torch.nonzero(labels == int(class_id)).flatten()
    if idx.numel() == 0:
        raise ValueError(f"class {class_id} has no samples in this dataset")
    if n is not None and idx.numel() > n:
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:n]].sort().values
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][idx]
    return torch.stack([ds[int(i)][0] for i in idx])


def few_shot_indices(labels: torch.Tensor, classes: Sequence[int], shots: int, seed: int = 0) -> torch.Tensor:
    """``shots`` seeded training indices per class (few-shot protocol, ours)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in classes:
        idx = torch.nonzero(labels == int(c)).flatten()
        if idx.numel() < shots:
            raise ValueError(f"class {c} has only {idx.numel()} samples, fewer than shots={shots}")
        out.append(idx[torch.randperm(idx.numel(), generator=g)[:shots]])
    return torch.cat(out).sort().values


@dataclass
class CILBenchmark:
    """Train/test pools, their class-incremental split and the class names."""

    train: Dataset
    test: Dataset
    split: IncrementalSplit
    class_names: dict[int, str]
    train_labels: torch.Tensor
    test_labels: torch.Tensor

    def task_train(self, t: int, shots: int | None = None, seed: int = 0) -> Dataset:
        s = self.split[t]
        idx = s.train_idx
        if shots is not None:
            idx = few_shot_indices(self.train_labels, s.classes, shots, seed + t)
        return Subset(self.train, idx.tolist())

    def task_test(self, t: int) -> Dataset:
        return Subset(self.test, self.split[t].test_idx.tolist())


def _transform(size: int, train: bool):
    from torchvision import transforms

    ops = [transforms.Resize((size, size))]
    if train:
        ops.append(transforms.RandomHorizontalFlip())
    ops.append(transforms.ToTensor())  # [0, 1]; the small model normalises inside
    return transforms.Compose(ops)


def _names_from_folders(classes: Sequence[str]) -> dict[int, str]:
    return {i: c.replace("_", " ").lower() for i, c in enumerate(classes)}


def _imagenet_r(root: Path, size: int, test_frac: float, seed: int):
    from papers_shared.data import image_folder

    folder = root / "imagenet-r"
    if not folder.is_dir():
        raise DatasetNotFoundError(
            "ImageNet-R",
            folder,
            "Download imagenet-r.tar from https://github.com/hendrycks/imagenet-r and extract it there "
            "(200 class folders). The 24,000/6,000 split is drawn per class with the config's seed.",
        )
    full_tr = image_folder(folder, transform=_transform(size, True))
    full_te = image_folder(folder, transform=_transform(size, False))
    from papers_shared.data import stratified_split

    labels = dataset_labels(full_tr)
    tr, te = stratified_split(labels, test_frac=test_frac, seed=seed)
    names = _names_from_folders(full_tr.classes)
    return Subset(full_tr, tr.tolist()), Subset(full_te, te.tolist()), names


class _ListDataset(Dataset):
    def __init__(self, root: Path, items: list[tuple[str, int]], transform) -> None:
        self.root, self.items, self.transform = root, items, transform
        self.targets = [y for _, y in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        p, y = self.items[i]
        with Image.open(self.root / p) as im:
            return self.transform(im.convert("RGB")), y


def _domainnet(root: Path, size: int, domains: Sequence[str]):
    folder = root / "domainnet"
    how = (
        "Download the six DomainNet domains and their *_train.txt / *_test.txt lists from "
        "http://ai.bu.edu/M3SDA/ and extract them there (folder/<domain>/<class>/<img>, lists at the top)."
    )
    out = {}
    for split in ("train", "test"):
        items: list[tuple[str, int]] = []
        for d in domains:
            lst = folder / f"{d}_{split}.txt"
            if not lst.is_file():
                raise DatasetNotFoundError("DomainNet", lst, how)
            for line in lst.read_text().splitlines():
                if line.strip():
                    p, y = line.rsplit(maxsplit=1)
                    items.append((p, int(y)))
        out[split] = _ListDataset(folder, items, _transform(size, split == "train"))
    names: dict[int, str] = {}
    for p, y in out["train"].items:
        names.setdefault(y, Path(p).parts[1].replace("_", " ").lower() if len(Path(p).parts) > 2 else str(y))
    return out["train"], out["test"], names


def load_benchmark(cfg, image_size: int | None = None) -> CILBenchmark:
    """The benchmark of a :class:`~sr_cis.config.DataConfig`."""
    size = image_size or cfg.image_size
    root = Path(cfg.root).expanduser()
    if cfg.name == "digits":
        from papers_shared.data import load_digits_tensors, stratified_split

        x, y = load_digits_tensors(size=size, channels=3)
        tr, te = stratified_split(y, test_frac=0.3, seed=0)
        train, test = TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])
        names = dict(enumerate(DIGIT_NAMES))
    elif cfg.name == "cifar100":
        from papers_shared.data import cifar

        train = cifar(root, "cifar100", True, _transform(size, True), download=cfg.download)
        test = cifar(root, "cifar100", False, _transform(size, False), download=cfg.download)
        names = _names_from_folders(train.classes)
    elif cfg.name == "imagenet_r":
        train, test, names = _imagenet_r(root, size, cfg.test_frac, 0)
    elif cfg.name == "domainnet":
        train, test, names = _domainnet(root, size, cfg.domainnet_domains)
    else:
        raise ValueError(f"unknown dataset {cfg.name!r}; use digits, cifar100, imagenet_r or domainnet")
    ytr, yte = dataset_labels(train), dataset_labels(test)
    split = task_sessions(ytr, yte, cfg.num_tasks, seed=cfg.class_order_seed)
    return CILBenchmark(train, test, split, names, ytr, yte)


def eval_subset(test: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``max_samples`` test samples (all of them when ``None``)."""
    if max_samples is None or len(test) <= max_samples:
        return test
    g = torch.Generator().manual_seed(seed)
    return Subset(test, torch.randperm(len(test), generator=g)[:max_samples].tolist())


def hold_out_pretrain(bench: CILBenchmark, frac: float, seed: int) -> tuple[CILBenchmark, Subset]:
    """Split a stratified share ``frac`` of the training pool off for pre-training a tiny backbone.

    Returns the benchmark restricted to the rest (task splits re-indexed, test unchanged) and the held-out
    pre-training subset. The two are disjoint, so no incremental training image is seen in pre-training.
    """
    from papers_shared.data import stratified_split
    from papers_shared.sessions import IncrementalSplit, Session

    rest, pre = stratified_split(bench.train_labels, test_frac=frac, seed=seed)
    rest_ds = Subset(bench.train, rest.tolist())
    pos = {int(i): j for j, i in enumerate(rest.tolist())}
    sessions = []
    for s in bench.split.sessions:
        tr = torch.tensor([pos[int(i)] for i in s.train_idx if int(i) in pos], dtype=torch.long)
        sessions.append(Session(s.index, list(s.classes), tr, s.test_idx))
    split = IncrementalSplit(sessions, bench.split.class_order, bench.split.protocol, bench.split.seed)
    restricted = CILBenchmark(
        rest_ds, bench.test, split, bench.class_names, dataset_labels(rest_ds), bench.test_labels
    )
    return restricted, Subset(bench.train, pre.tolist())


def in_memory(ds: Dataset) -> Dataset:
    """``ds`` as one :class:`TensorDataset` when it is a (chain of) subset(s) or concatenation of tensor
    datasets (cheap batches by indexing), else ``ds`` unchanged (image files are read by a DataLoader)."""
    if isinstance(ds, TensorDataset):
        return ds
    if isinstance(ds, Subset):
        inner = in_memory(ds.dataset)
        if isinstance(inner, TensorDataset):
            idx = torch.as_tensor(ds.indices, dtype=torch.long)
            return TensorDataset(*(t[idx] for t in inner.tensors))
    if isinstance(ds, ConcatDataset):
        parts = [in_memory(d) for d in ds.datasets]
        if all(isinstance(p, TensorDataset) for p in parts):
            return TensorDataset(*(torch.cat(ts) for ts in zip(*(p.tensors for p in parts))))
    return ds


def stack_dataset(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of a (small) dataset as two tensors."""
    labels = dataset_labels(ds)
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], labels
    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorDataset):
        return ds.dataset.tensors[0][torch.as_tensor(ds.indices, dtype=torch.long)], labels
    return torch.stack([ds[i][0] for i in range(len(ds))]), labels
