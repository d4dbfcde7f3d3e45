"""FSCIL data: sklearn digits (offline), CIFAR100, CUB200, ImageNet-R (splits as in C-FSCIL/TOPIC).

Every loader returns :class:`FSCILData`. Real datasets are read from local folders only; when the files
are absent the error is a ``DatasetNotFoundError`` naming the path and how to get the data. Sessions come
from TOPIC-style index lists (``index_dir``) or are generated reproducibly with ``FSCILImageSplit.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from papers_shared.data import DatasetNotFoundError, FSCILImageSplit, cifar, image_folder, load_digits_fscil
from papers_shared.sessions import IncrementalSplit

__all__ = ["FSCILData", "gather", "load_fscil_data", "digits_data"]


@dataclass
class FSCILData:
    name: str
    train: Dataset  # training transform (augmentation) for pre-/meta-training
    train_plain: Dataset  # evaluation transform on the training images (memory writes, supports)
    test: Dataset
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    split: IncrementalSplit
    in_channels: int
    image_size: int
    input_norm: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.split.class_order)

    @property
    def base_classes(self) -> list[int]:
        return list(self.split[0].classes)


def gather(ds: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples ``idx`` of a dataset into ``(x, y)``; tensor datasets are indexed directly."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][idx], ds.tensors[1][idx]
    xs, ys = zip(*(ds[int(i)] for i in idx.tolist()))
    return torch.stack(list(xs)), torch.as_tensor(ys, dtype=torch.long)


def digits_data(base: int = 6, ways: int = 2, shots: int = 5, seed: int = 0) -> FSCILData:
    """sklearn digits, 8x8 grey (ours): base classes 0..base-1, then ``ways``-way ``shots``-shot."""
    xtr, ytr, xte, yte, split = load_digits_fscil(base=base, ways=ways, shots=shots, seed=seed)
    tr = TensorDataset(xtr, ytr)
    return FSCILData("digits", tr, tr, TensorDataset(xte, yte), ytr, yte, split, 1, 8, None)


def _split(cfg, ytr, yte, keys) -> IncrementalSplit:
    if cfg.index_dir:
        return FSCILImageSplit.from_index_files(cfg.index_dir, keys, ytr, yte).split
    return FSCILImageSplit.generate(
        ytr, yte, cfg.base_classes, cfg.ways, cfg.shots, cfg.num_sessions, seed=cfg.split_seed
    ).split


def _cifar100(cfg) -> FSCILData:
    from torchvision import transforms as T

    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    plain = T.ToTensor()
    tr = cifar(cfg.data_root, "cifar100", True, aug, cfg.download, download_key="download")
    tr_plain = cifar(cfg.data_root, "cifar100", True, plain, False, download_key="download")
    te = cifar(cfg.data_root, "cifar100", False, plain, False, download_key="download")
    ytr, yte = torch.as_tensor(tr.targets), torch.as_tensor(te.targets)
    split = _split(cfg, ytr, yte, [str(i) for i in range(len(ytr))])
    return FSCILData("cifar100", tr, tr_plain, te, ytr, yte, split, 3, 32, "cifar")


def _transforms(size: int):
    from torchvision import transforms as T

    aug = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    plain = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor()])
    return aug, plain


class _Files(Dataset):
    def __init__(self, files: list[Path], labels: list[int], transform) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.open(self.files[i]).convert("RGB")), self.labels[i]


def _file_data(name: str, cfg, train: tuple, test: tuple, keys: list[str]) -> FSCILData:
    """RGB image files ``(paths, labels)`` at ``cfg.image_size``, ImageNet normalisation, FSCIL split."""
    (ftr, ytr), (fte, yte) = train, test
    aug, plain = _transforms(cfg.image_size)
    split = _split(cfg, torch.tensor(ytr), torch.tensor(yte), keys)
    tr, tr_plain, te = _Files(ftr, ytr, aug), _Files(ftr, ytr, plain), _Files(fte, yte, plain)
    ytr_t, yte_t = torch.tensor(ytr), torch.tensor(yte)
    return FSCILData(name, tr, tr_plain, te, ytr_t, yte_t, split, 3, cfg.image_size, "imagenet")


def _cub200(cfg) -> FSCILData:
    """CUB_200_2011 official layout (images.txt, image_class_labels.txt, train_test_split.txt, images/)."""
    root = Path(cfg.data_root).expanduser()
    need = [root / n for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt")]
    missing = [p for p in need if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            "CUB-200-2011",
            missing[0],
            "Download CUB_200_2011.tgz (Caltech-UCSD Birds, data.caltech.edu/records/65de6-vp158), unpack it "
            "and set data_root to the CUB_200_2011 folder (it holds images/ and images.txt).",
        )

    def table(p: Path) -> dict[int, str]:
        return {int(a): b for a, b in (line.split(maxsplit=1) for line in p.read_text().splitlines() if line)}

    names, labels, is_train = (table(p) for p in need)
    ids = sorted(names)
    tr_ids = [i for i in ids if is_train[i].strip() == "1"]
    te_ids = [i for i in ids if is_train[i].strip() == "0"]
    files = {i: root / "images" / names[i].strip() for i in ids}
    if not files[ids[0]].is_file():
        raise DatasetNotFoundError(
            "CUB-200-2011 images", files[ids[0]], "Unpack the images/ folder of the archive."
        )
    ytr = [int(labels[i]) - 1 for i in tr_ids]
    yte = [int(labels[i]) - 1 for i in te_ids]
    ftr, fte = [files[i] for i in tr_ids], [files[i] for i in te_ids]
    keys = ["images/" + names[i].strip() for i in tr_ids]
    return _file_data("cub200", cfg, (ftr, ytr), (fte, yte), keys)


def _imagenet_r(cfg) -> FSCILData:
    """ImageNet-R: ``root/train`` + ``root/test`` class folders, or one folder of 200 class folders split
    per class with a seeded ``imagenet_r_test_frac`` (no official split; ours)."""
    from papers_shared.data import stratified_split

    root = Path(cfg.data_root).expanduser()
    plain = _transforms(cfg.image_size)[1]
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr_all, te_all = image_folder(root / "train", plain), image_folder(root / "test", plain)
        ftr = [Path(p) for p, _ in tr_all.samples]
        ytr = [y for _, y in tr_all.samples]
        fte = [Path(p) for p, _ in te_all.samples]
        yte = [y for _, y in te_all.samples]
    else:
        ds = image_folder(root, plain)
        y = torch.tensor([t for _, t in ds.samples])
        tr, te = stratified_split(y, cfg.imagenet_r_test_frac, seed=cfg.split_seed)
        ftr = [Path(ds.samples[i][0]) for i in tr.tolist()]
        ytr = y[tr].tolist()
        fte = [Path(ds.samples[i][0]) for i in te.tolist()]
        yte = y[te].tolist()
    keys = [str(p.relative_to(root)) for p in ftr]
    return _file_data("imagenet_r", cfg, (ftr, ytr), (fte, yte), keys)


def load_fscil_data(cfg) -> FSCILData:
    """Data of an :class:`~g2g_fscil.config.ExperimentConfig`."""
    if cfg.dataset == "digits":
        return digits_data(cfg.base_classes, cfg.ways, cfg.shots, cfg.split_seed)
    if cfg.dataset == "cifar100":
        return _cifar100(cfg)
    if cfg.dataset == "cub200":
        return _cub200(cfg)
    if cfg.dataset == "imagenet_r":
        return _imagenet_r(cfg)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def subset(ds: Dataset, idx: torch.Tensor) -> Dataset:
    return Subset(ds, idx.tolist())
