"""Backbones of the paper's protocol (MetaQuant Tables 1-2, FSG paper CIFAR tables): the CIFAR ResNets of He et al. in the MetaQuant
variant (16-32-64 channels, BasicBlocks, 1x1-conv + BN downsample, global average pooling,
``BatchNorm1d(64)`` before the classifier), and a small MLP for the offline digits experiment (§8).

Module names match the official code, so its full-precision checkpoints
(``Results/<Model>-<Data>/<Model>-<Data>-pretrain.pth``) load with :func:`load_fp_checkpoint`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from papers_shared.checkpoints import load_checkpoint, load_safetensors
from papers_shared.errors import CheckpointError

__all__ = [
    "CIFAR_DEPTHS",
    "BasicBlock",
    "ResNetCifar",
    "build_model",
    "load_fp_checkpoint",
    "mlp",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet_cifar",
]

CIFAR_DEPTHS = (20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """3x3 conv - BN - ReLU - 3x3 conv - BN, plus the (optionally downsampled) shortcut, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) as in MetaQuant/FSG (official
    ``models_CIFAR/quantized_meta_resnet.py:ResNet_Cifar``, two-tiger/FSG @ 9559b30).

    ``binary_layer_order`` lists the convolution/linear layers in the official registry order:
    ``conv1, fc``, then per stage the downsample conv (if any) followed by each block's ``conv1,
    conv2`` (the official ``layer_name_list`` order). :func:`fsg_bnn.binarize` uses it for the LRE indices.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. {list(CIFAR_DEPTHS)}), got {depth}")
        n = (depth - 2) // 6
        self.depth, self.num_classes = depth, num_classes
        self.binary_layer_order: list[str] = ["conv1", "fc"]
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(16, n, 1, 1)
        self.layer2 = self._make_stage(32, n, 2, 2)
        self.layer3 = self._make_stage(64, n, 2, 3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_stage(self, planes: int, blocks: int, stride: int, idx: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
            self.binary_layer_order.append(f"layer{idx}.0.downsample.0")
        layers = []
        for b in range(blocks):
            layers.append(
                BasicBlock(self.inplanes, planes, stride if b == 0 else 1, downsample if b == 0 else None)
            )
            self.inplanes = planes
            self.binary_layer_order += [f"layer{idx}.{b}.conv1", f"layer{idx}.{b}.conv2"]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.bn2(torch.flatten(self.avgpool(x), 1))
        return self.fc(x)


def resnet_cifar(depth: int = 20, num_classes: int = 10) -> ResNetCifar:
    """Full-precision CIFAR ResNet of the given depth (20, 32, 44, 56, 110, ...)."""
    return ResNetCifar(depth, num_classes)


def resnet20(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(20, num_classes)


def resnet32(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(32, num_classes)


def resnet44(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(44, num_classes)


def resnet56(num_classes: int = 100) -> ResNetCifar:
    return ResNetCifar(56, num_classes)


def resnet110(num_classes: int = 100) -> ResNetCifar:
    return ResNetCifar(110, num_classes)


def mlp(in_features: int = 64, hidden: Sequence[int] = (32, 32), num_classes: int = 10) -> nn.Sequential:
    """``Linear - BatchNorm1d - ReLU`` blocks and a linear classifier (the digits model of the quick reproduction, ours)."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def build_model(
    arch: str, num_classes: int, in_features: int = 64, hidden: Sequence[int] = (32, 32)
) -> nn.Module:
    """``"resnet20" | "resnet32" | "resnet44" | "resnet56" | "resnet110" | "resnet<6n+2>" | "mlp"``."""
    arch = arch.lower()
    if arch == "mlp":
        return mlp(in_features, hidden, num_classes)
    if arch.startswith("resnet") and arch[6:].isdigit():
        return ResNetCifar(int(arch[6:]), num_classes)
    raise ValueError(
        f"unknown arch {arch!r}; use 'mlp' or 'resnet<depth>' with depth in {list(CIFAR_DEPTHS)}"
    )


def load_fp_checkpoint(model: nn.Module, path: str | Path, strict: bool = False) -> list[str]:
    """Load a full-precision checkpoint (safetensors, or a torch file read with ``weights_only=True``
    holding a state dict, or a dict holding one under ``"model"`` /
    ``"state_dict"`` / ``"net"``). Non-strict by default, like the official code; returns the missing
    keys. Raises ``FileNotFoundError`` naming the path when it is absent and ``CheckpointError`` when no
    key matches (a checkpoint of another architecture)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"full-precision checkpoint not found: {path}. Pretrain one with `fsg-bnn pretrain --config ...` "
            "or point `train.pretrained` at an official Results/<Model>-<Data>-pretrain.pth file."
        )
    if path.suffix == ".safetensors":
        state, _ = load_safetensors(path)
    else:  # an official Results/*-pretrain.pth or a torch state dict: tensors only (weights_only)
        state = load_checkpoint(path)
    for key in ("model", "state_dict", "net"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    if not isinstance(state, dict) or not set(state) & set(own):
        raise CheckpointError(
            f"{path}: no parameter name matches the model (is it a checkpoint of another arch?)"
        )
    result = model.load_state_dict(state, strict=strict)
    return list(result.missing_keys)
