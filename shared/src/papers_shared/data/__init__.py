"""Datasets: bundled digits, torchvision image sets, ImageNet folders, graphs (PyG), HF datasets.

Submodules: :mod:`~papers_shared.data.digits`, :mod:`~papers_shared.data.vision`,
:mod:`~papers_shared.data.graph` (needs the ``graph`` extra), :mod:`~papers_shared.data.hf`
(needs the ``hf`` extra). Missing data raises :class:`DatasetNotFoundError`, never a silent fallback.
"""

from papers_shared.data.digits import digits_tensor_dataset, load_digits_tensors, stratified_split
from papers_shared.data.errors import DatasetNotFoundError
from papers_shared.data.vision import (
    IBTA_TARGETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TTP_TARGETS,
    FSCILImageSplit,
    cifar,
    exclude_class,
    image_folder,
    imagenet_subset,
    load_digits_fscil,
    nips17_dataset,
    standard_transform,
)

__all__ = [
    "IBTA_TARGETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TTP_TARGETS",
    "DatasetNotFoundError",
    "FSCILImageSplit",
    "cifar",
    "digits_tensor_dataset",
    "exclude_class",
    "image_folder",
    "imagenet_subset",
    "load_digits_fscil",
    "load_digits_tensors",
    "nips17_dataset",
    "standard_transform",
    "stratified_split",
]
