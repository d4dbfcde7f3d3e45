"""Class-incremental streams: Split CIFAR-10/100, Split ImageNet-R and the bundled digits (official
``datasets/seq_cifar10.py``, ``seq_cifar100.py``, ``seq_imagenet_r.py`` at commit 8c8ad10; digits: ours).

Labels are remapped to contiguous stream ids (task ``t`` owns ``[t*C, (t+1)*C)``, as the memory
assumes), and ``class_names[i]`` names stream id ``i``. Images are float ``[3, H, W]`` in [0, 1], not
normalised and not augmented (System1 normalises inside; the learners augment).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from papers_shared.data import (
    DatasetNotFoundError,
    cifar,
    image_folder,
    load_digits_tensors,
    stratified_split,
)
from papers_shared.sessions import task_sessions

__all__ = [
    "DIGIT_NAMES",
    "StreamData",
    "build_stream",
    "cifar_stream",
    "digits_stream",
    "imagenet_r_stream",
    "iterate_batches",
]

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass
class StreamData:
    """Per-task train/test datasets with contiguous labels, the class names and (digits) pre-training data."""

    name: str
    train_sets: list[Dataset]
    test_sets: list[Dataset]
    class_names: list[str]
    classes_per_task: int
    pretrain: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.train_sets)

    @property
    def num_classes(self) -> int:
        return self.num_tasks * self.classes_per_task


class _Remapped(Dataset):
    """``dataset[indices[i]]`` with the label mapped through ``mapping`` (original id -> stream id)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, mapping: dict[int, int]) -> None:
        self.dataset, self.indices, self.mapping = dataset, indices.tolist(), mapping

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.dataset[self.indices[i]][:2]
        return x, self.mapping[int(y)]


def _cap(idx: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n <= 0 or idx.numel() <= n:
        return idx
    g = torch.Generator().manual_seed(seed)
    return idx[torch.randperm(idx.numel(), generator=g)[:n]].sort().values


def _split_sets(cfg, train_ds, train_labels, test_ds, test_labels, names):
    split = task_sessions(train_labels, test_labels, cfg.num_tasks, seed=cfg.class_order_seed)
    mapping = {c: i for i, c in enumerate(split.class_order)}
    trains, tests = [], []
    for s in split:
        tr = _cap(s.train_idx, cfg.max_train_per_task, cfg.split_seed + s.index)
        te = _cap(s.test_idx, cfg.max_test_per_task, cfg.split_seed + 100 + s.index)
        trains.append(_Remapped(train_ds, tr, mapping))
        tests.append(_Remapped(test_ds, te, mapping))
    return trains, tests, [names[c] for c in split.class_order], len(split[0].classes)


def digits_stream(cfg) -> StreamData:
    """sklearn digits (ours): 16 px RGB, stratified 70/30 split, a disjoint stratified
    ``pretrain_fraction`` of the training images set aside to pre-train the tiny ViT, 5 tasks x 2."""
    x, y = load_digits_tensors(size=cfg.digits_size, channels=3)
    tr, te = stratified_split(y, test_frac=0.3, seed=cfg.split_seed)
    stream_rel, pre_rel = stratified_split(y[tr], test_frac=cfg.pretrain_fraction, seed=cfg.split_seed + 1)
    stream_idx, pre_idx = tr[stream_rel], tr[pre_rel]
    xs, ys, xt, yt = x[stream_idx], y[stream_idx], x[te], y[te]
    split = task_sessions(ys, yt, cfg.num_tasks, seed=cfg.class_order_seed)
    mapping = torch.tensor([split.class_order.index(c) for c in range(10)])
    trains, tests = [], []
    for s in split:
        tri = _cap(s.train_idx, cfg.max_train_per_task, cfg.split_seed + s.index)
        tei = _cap(s.test_idx, cfg.max_test_per_task, cfg.split_seed + 100 + s.index)
        trains.append(TensorDataset(xs[tri], mapping[ys[tri]]))
        tests.append(TensorDataset(xt[tei], mapping[yt[tei]]))
    names = [DIGIT_NAMES[c] for c in split.class_order]
    return StreamData(
        "digits", trains, tests, names, len(split[0].classes), (x[pre_idx], mapping[y[pre_idx]])
    )


def cifar_stream(cfg, name: str) -> StreamData:
    """Split CIFAR-10 (5 x 2) / CIFAR-100 (10 x 10) from ``cfg.root`` (downloads only with ``cfg.download``)."""
    from torchvision import transforms

    t = transforms.ToTensor()
    train = cifar(cfg.root, name, train=True, transform=t, download=cfg.download)
    test = cifar(cfg.root, name, train=False, transform=t, download=cfg.download)
    trains, tests, names, per = _split_sets(
        cfg, train, train.targets, test, test.targets, list(train.classes)
    )
    return StreamData(f"seq-{name}", trains, tests, names, per)


def _imagenet_r_classes(root: Path, folders: Sequence[str]) -> tuple[list[str], list[str]]:
    """Class order and names: ``root/class.txt`` (``<wnid> <name>`` per line, the code's file) when
    present, else sorted folder names used as names."""
    meta = root / "class.txt"
    if not meta.is_file():
        return sorted(folders), sorted(folders)
    order, names = [], []
    for line in meta.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            order.append(parts[0])
            names.append(parts[1])
    missing = sorted(set(order) - set(folders))
    if missing:
        raise DatasetNotFoundError(
            "ImageNet-R class folders",
            root / missing[0],
            f"class.txt lists {len(missing)} wnids without a folder",
        )
    return order, names


def imagenet_r_stream(cfg) -> StreamData:
    """Split ImageNet-R: 200 classes, 10 x 20, seeded per-class ``train_fraction`` split (official ``datasets/seq_imagenet_r.py``).

    ``cfg.root`` holds one folder per wnid (the official ``imagenet-r.tar``); images are resized to
    ``load_size`` squared at load time, no other train transform.
    """
    from torchvision import transforms

    root = Path(cfg.root).expanduser()
    t = transforms.Compose([transforms.Resize((cfg.load_size, cfg.load_size)), transforms.ToTensor()])
    ds = image_folder(root, transform=t)
    order, names = _imagenet_r_classes(root, ds.classes)
    pos = {w: i for i, w in enumerate(order)}
    folder_to_class = {ds.class_to_idx[w]: pos[w] for w in order}
    labels = torch.tensor([folder_to_class.get(y, -1) for _, y in ds.samples])
    keep = (labels >= 0).nonzero().flatten()
    g = torch.Generator().manual_seed(cfg.split_seed)
    train_idx, test_idx = [], []
    for c in range(len(order)):
        idx = keep[labels[keep] == c]
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_train = int(idx.numel() * cfg.train_fraction)
        train_idx.append(idx[:n_train])
        test_idx.append(idx[n_train:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)

    class _Relabel(Dataset):
        def __init__(self, idx: torch.Tensor) -> None:
            self.idx = idx.tolist()

        def __len__(self) -> int:
            return len(self.idx)

        def __getitem__(self, i: int):
            x, _ = ds[self.idx[i]]
            return x, int(labels[self.idx[i]])

    trains, tests, names_o, per = _split_sets(cfg, _Relabel(tr), labels[tr], _Relabel(te), labels[te], names)
    return StreamData("seq-imagenet-r", trains, tests, names_o, per)


def build_stream(cfg) -> StreamData:
    """The stream named by ``cfg.dataset`` (a :class:`~icl_vmf.config.DataConfig`)."""
    if cfg.dataset == "digits":
        return digits_stream(cfg)
    if cfg.dataset in ("seq-cifar10", "seq-cifar100"):
        return cifar_stream(cfg, cfg.dataset.removeprefix("seq-"))
    if cfg.dataset == "seq-imagenet-r":
        return imagenet_r_stream(cfg)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches; tensor datasets are sliced directly (no per-item collation)."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
        for s in range(0, len(y), batch_size):
            idx = order[s : s + batch_size]
            yield x[idx], y[idx]
        return
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers
    )
    for xb, yb in loader:
        yield xb, torch.as_tensor(yb).long()
