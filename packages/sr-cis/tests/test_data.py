import pytest
import torch

from papers_shared.data import DatasetNotFoundError
from sr_cis.config import DataConfig
from sr_cis.data import class_images, dataset_labels, few_shot_indices, load_benchmark


def test_digits_benchmark_and_few_shot():
    b = load_benchmark(DataConfig(name="digits", num_tasks=5, class_order_seed=0), image_size=16)
    assert len(b.split) == 5 and sorted(c for s in b.split for c in s.classes) == list(range(10))
    assert b.class_names[3] == "three"
    t1 = b.task_train(1, shots=5, seed=0)
    y = dataset_labels(t1)
    assert len(t1) == 10 and sorted(torch.unique(y).tolist()) == sorted(b.split[1].classes)
    assert all(int((y == c).sum()) == 5 for c in b.split[1].classes)
    assert torch.equal(dataset_labels(b.task_train(1, 5, 0)), y)  # seeded
    full = b.task_train(1)
    assert len(full) == b.split[1].train_idx.numel()
    x = class_images(b.train, b.train_labels, 3, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 16, 16)


def test_few_shot_errors():
    y = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="fewer than shots"):
        few_shot_indices(y, [1], 2)
    with pytest.raises(ValueError, match="shots"):
        few_shot_indices(y, [0], 0)


@pytest.mark.parametrize(
    "name,what", [("imagenet_r", "ImageNet-R"), ("domainnet", "DomainNet"), ("cifar100", "CIFAR100")]
)
def test_missing_real_data_is_a_clear_error(tmp_path, name, what):
    with pytest.raises(DatasetNotFoundError, match=what) as e:
        load_benchmark(DataConfig(name=name, root=str(tmp_path), num_tasks=5), image_size=32)
    assert str(tmp_path) in str(e.value)


def test_imagenet_r_folder_loader(tmp_path):
    from PIL import Image

    for c in ("goldfish", "great_white_shark"):
        d = tmp_path / "imagenet-r" / c
        d.mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(d / f"{i}.png")
    b = load_benchmark(
        DataConfig(name="imagenet_r", root=str(tmp_path), num_tasks=2, test_frac=0.2), image_size=8
    )
    assert b.class_names == {0: "goldfish", 1: "great white shark"}
    assert len(b.train) == 8 and len(b.test) == 2
    x, y = b.train[0]
    assert x.shape == (3, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
