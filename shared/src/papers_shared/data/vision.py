"""Image datasets: CIFAR (torchvision), ImageNet-style folders and class subsets, FSCIL index lists.

No loader downloads anything unless ``download=True`` is passed; when the files are absent the error
names the expected path and how to obtain them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from papers_shared.data.digits import load_digits_tensors, stratified_split
from papers_shared.data.errors import DatasetNotFoundError
from papers_shared.sessions import IncrementalSplit, Session, few_shot_sessions

__all__ = [
    "IBTA_TARGETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TTP_TARGETS",
    "FSCILImageSplit",
    "cifar",
    "exclude_class",
    "image_folder",
    "imagenet_subset",
    "load_digits_fscil",
    "nips17_dataset",
    "standard_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The 10 ImageNet target classes of the TTP "10-Targets" protocol (used by ESMA).
TTP_TARGETS = [24, 99, 245, 344, 471, 555, 661, 701, 802, 919]
#: The 10 ImageNet target classes of IBTA's sub-source protocol.
IBTA_TARGETS = [31, 56, 241, 335, 458, 532, 712, 766, 887, 975]


def standard_transform(resize: int = 256, crop: int = 224):
    """Resize(resize) -> CenterCrop(crop) -> ToTensor: images in [0, 1], no normalisation
    (classifiers are wrapped so that they normalise inside)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor()])


def cifar(
    root: str | Path,
    name: str = "cifar10",
    train: bool = True,
    transform: Callable | None = None,
    download: bool = False,
    *,
    download_key: str | None = "data.download",
) -> Dataset:
    """torchvision CIFAR-10/100 from ``root``; clear error if absent and ``download`` is False.

    ``download_key`` is the caller's config key that sets ``download``: the error tells the user to set it
    (``None``: the caller has no such key, and the error only says how to download the files).
    """
    from torchvision import datasets, transforms

    name = name.lower()
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}.get(name)
    if cls is None:
        raise ValueError(f"unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'")
    root = Path(root).expanduser()
    try:
        return cls(str(root), train=train, transform=transform or transforms.ToTensor(), download=download)
    except RuntimeError as exc:
        if "not found" in str(exc).lower() or "corrupted" in str(exc).lower():
            folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
            how = (
                f"Download it once on a machine with internet (torchvision.datasets.{cls.__name__}"
                f"(root={str(root)!r}, download=True))"
            )
            allow = f", or allow the download (the config key {download_key}=true)" if download_key else ""
            raise DatasetNotFoundError(name.upper(), root / folder, how + allow + ".") from exc
        raise


def image_folder(root: str | Path, transform: Callable | None = None) -> Dataset:
    """``torchvision.datasets.ImageFolder`` with a clear error when the folder is missing or empty."""
    from torchvision import datasets

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            "Image folder",
            root,
            "Expected one sub-folder per class (ImageNet layout: root/<wnid>/<image>.JPEG). "
            "Download the dataset from its official site and point the config or --data-dir at it.",
        )
    try:
        return datasets.ImageFolder(str(root), transform=transform or standard_transform())
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(
            "Image folder", root, f"No class folders with images found: {exc}"
        ) from exc


def imagenet_subset(
    root: str | Path, class_ids: Sequence[int], split: str = "val", transform: Callable | None = None
) -> Dataset:
    """Images of the given ImageNet class ids (sorted wnid order = standard 0..999 ids) from
    ``root/<split>``. Labels keep the original ImageNet ids."""
    ds = image_folder(Path(root).expanduser() / split, transform=transform)
    ids = set(int(c) for c in class_ids)
    bad = [c for c in ids if not 0 <= c < len(ds.classes)]
    if bad:
        raise ValueError(f"class ids {sorted(bad)} are outside 0..{len(ds.classes) - 1}")
    keep = [i for i, (_, y) in enumerate(ds.samples) if y in ids]
    return Subset(ds, keep)


def exclude_class(labels: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """Mask of samples whose true label differs from the target (targeted success is measured on them)."""
    return torch.as_tensor(labels) != torch.as_tensor(target)


class _CsvImages(Dataset):
    def __init__(self, root: Path, rows: list[tuple[str, int, int]], transform: Callable | None):
        self.root, self.rows, self.transform = root, rows, transform or standard_transform(299, 299)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from PIL import Image

        name, label, target = self.rows[i]
        img = Image.open(self.root / "images" / name).convert("RGB")
        return self.transform(img), label, target


def nips17_dataset(root: str | Path, transform: Callable | None = None) -> Dataset:
    """The NIPS'17 adversarial-competition dev set: ``root/images/*.png`` and ``root/images.csv``
    (columns ImageId, TrueLabel, TargetClass, 1-based ids). Returns ``(image, label, target)`` 0-based."""
    import csv

    root = Path(root).expanduser()
    meta = root / "images.csv"
    if not meta.is_file():
        raise DatasetNotFoundError(
            "NIPS'17 dev set",
            meta,
            "Download the 1 000-image development set of the NIPS 2017 adversarial competition "
            "(Kaggle 'nips-2017-defense-against-adversarial-attack') and unpack images/ and images.csv.",
        )
    rows = []
    with meta.open() as fh:
        for r in csv.DictReader(fh):
            rows.append((f"{r['ImageId']}.png", int(r["TrueLabel"]) - 1, int(r["TargetClass"]) - 1))
    return _CsvImages(root, rows, transform)


class FSCILImageSplit:
    """FSCIL sessions for an image dataset.

    Either read TOPIC-style index lists (``index_dir/session_1.txt`` ... one image path or sample index
    per line; session 1 is the base session) with :meth:`from_index_files`, or generate them
    reproducibly from labels with :meth:`generate` (ascending class order, seeded shots).
    """

    def __init__(self, split: IncrementalSplit) -> None:
        self.split = split

    @classmethod
    def generate(
        cls,
        train_labels: torch.Tensor,
        test_labels: torch.Tensor,
        base_classes: int,
        ways: int,
        shots: int,
        num_sessions: int | None = None,
        seed: int = 1,
    ) -> FSCILImageSplit:
        return cls(
            few_shot_sessions(
                train_labels, test_labels, base_classes, ways, shots, num_sessions=num_sessions, seed=seed
            )
        )

    @classmethod
    def from_index_files(
        cls,
        index_dir: str | Path,
        train_keys: Sequence[str],
        train_labels: torch.Tensor,
        test_labels: torch.Tensor,
    ) -> FSCILImageSplit:
        """``train_keys[i]`` is the key (relative path or index as text) of training sample ``i``; each
        ``session_k.txt`` lists the keys of that session's training samples."""
        index_dir = Path(index_dir).expanduser()
        files = sorted(index_dir.glob("session_*.txt"), key=lambda p: int(p.stem.split("_")[1]))
        if not files:
            raise DatasetNotFoundError(
                "FSCIL session index lists",
                index_dir,
                "Expected session_1.txt (base) ... session_N.txt; generate a split with "
                "FSCILImageSplit.generate(...) or copy the TOPIC lists of the benchmark.",
            )
        pos = {k: i for i, k in enumerate(train_keys)}
        ytr, yte = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
        sessions, seen = [], []
        for s, f in enumerate(files):
            keys = [line.strip() for line in f.read_text().splitlines() if line.strip()]
            missing = [k for k in keys if k not in pos]
            if missing:
                raise ValueError(f"{f}: {len(missing)} keys not in the training set (first: {missing[0]!r})")
            idx = torch.tensor([pos[k] for k in keys], dtype=torch.long)
            cs = sorted(set(ytr[idx].tolist()) - set(seen))
            seen += cs
            test = torch.nonzero(torch.isin(yte, torch.tensor(cs))).flatten()
            sessions.append(Session(s, cs, idx, test, support_idx=idx if s > 0 else None))
        split = IncrementalSplit(sessions, seen, protocol="fscil-index-files")
        split.check()
        return cls(split)

    def write_index_files(self, index_dir: str | Path, train_keys: Sequence[str]) -> None:
        from papers_shared.checkpoints import atomic_write_text

        for s in self.split:
            lines = "\n".join(train_keys[i] for i in s.train_idx.tolist())
            atomic_write_text(Path(index_dir) / f"session_{s.index + 1}.txt", lines + "\n")


def load_digits_fscil(
    base: int = 6,
    ways: int = 2,
    shots: int = 5,
    seed: int = 0,
    size: int = 8,
    channels: int = 1,
    test_frac: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, IncrementalSplit]:
    """sklearn digits as an FSCIL benchmark: base classes ``0..base-1`` (all their training images),
    then sessions of ``ways`` classes with ``shots`` images each; a seeded 70/30 per-class split.

    Returns ``(x_train, y_train, x_test, y_test, split)``.
    """
    x, y = load_digits_tensors(size=size, channels=channels)
    tr, te = stratified_split(y, test_frac=test_frac, seed=seed)
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    split = few_shot_sessions(ytr, yte, base_classes=base, ways=ways, shots=shots, seed=seed)
    return xtr, ytr, xte, yte, split
