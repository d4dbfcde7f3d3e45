"""Real-data loaders on tiny fake datasets in the official layouts (no downloads)."""

import pytest
import torch

from g2g_fscil.config import ExperimentConfig, G2GConfig
from g2g_fscil.data import load_fscil_data
from g2g_fscil.experiment import build_model
from g2g_fscil.trainer import pretrain
from papers_shared.data import DatasetNotFoundError


def _png(path, seed):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _cfg(dataset, root, **kw):
    model = G2GConfig(backbone="tiny", in_channels=3, feat_dim=8, local_pool=2, meta_ways=2)
    return ExperimentConfig(
        name=dataset,
        dataset=dataset,
        data_root=str(root),
        image_size=16,
        base_classes=2,
        ways=1,
        shots=3,
        num_sessions=2,
        model=model,
        **kw,
    )


def _fake_cub(root, classes=4, per_class=6):
    names, labels, split = [], [], []
    i = 1
    for c in range(classes):
        for k in range(per_class):
            rel = f"{c + 1:03d}.bird{c}/img_{k}.jpg"
            _png(root / "images" / rel, i)
            names.append(f"{i} {rel}")
            labels.append(f"{i} {c + 1}")
            split.append(f"{i} {1 if k < 4 else 0}")
            i += 1
    (root / "images.txt").write_text("\n".join(names) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")


def test_cub_layout_sessions_and_pretrain_dataloader(tmp_path):
    _fake_cub(tmp_path)
    data = load_fscil_data(_cfg("cub200", tmp_path))
    assert len(data.train_labels) == 16 and len(data.test_labels) == 8
    assert [s.classes for s in data.split] == [[0, 1], [2], [3]]
    assert data.split[1].train_idx.numel() == 3
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    net = build_model(data, data_cfg := _cfg("cub200", tmp_path).model)
    assert data_cfg.in_channels == 3
    losses = pretrain(net, data, 1, 0.01, 5, 4, "cpu", 0)
    assert len(losses) == 1 and losses[0] == losses[0]


def test_cub_index_files_roundtrip(tmp_path):
    from papers_shared.data import FSCILImageSplit

    _fake_cub(tmp_path)
    data = load_fscil_data(_cfg("cub200", tmp_path))
    keys = ["images/" + p.relative_to(tmp_path / "images").as_posix() for p in data.train_plain.files]
    FSCILImageSplit(data.split).write_index_files(tmp_path / "idx", keys)
    again = load_fscil_data(_cfg("cub200", tmp_path, index_dir=str(tmp_path / "idx")))
    assert [s.classes for s in again.split] == [s.classes for s in data.split]
    for a, b in zip(again.split, data.split):
        assert torch.equal(a.train_idx.sort().values, b.train_idx.sort().values)


def test_imagenet_r_folder_split(tmp_path):
    for c in range(4):
        for k in range(6):
            _png(tmp_path / f"n0{c}" / f"{k}.jpg", 10 * c + k)
    data = load_fscil_data(_cfg("imagenet_r", tmp_path, imagenet_r_test_frac=0.34))
    assert len(data.train_labels) + len(data.test_labels) == 24
    assert set(data.test_labels.tolist()) == {0, 1, 2, 3}


def test_missing_datasets_raise_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CUB-200-2011"):
        load_fscil_data(_cfg("cub200", tmp_path))
    with pytest.raises(DatasetNotFoundError, match="CIFAR100"):
        load_fscil_data(_cfg("cifar100", tmp_path / "c"))
    with pytest.raises(DatasetNotFoundError, match="Image folder"):
        load_fscil_data(_cfg("imagenet_r", tmp_path / "r"))
    _fake_cub(tmp_path / "cub")
    with pytest.raises(DatasetNotFoundError, match="session index lists"):
        load_fscil_data(_cfg("cub200", tmp_path / "cub", index_dir=str(tmp_path / "noidx")))
