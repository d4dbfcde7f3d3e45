"""Backbones that return feature maps ``F(x) in R^{B x D x H x W}`` (C-FSCIL ``embeddings/``).

* ``resnet12``: DeepEMD/C-FSCIL-style ResNet-12, filters [64, 160, 320, 640] (D = 640, 2x2 map at 32 px).
* ``resnet20``: the CIFAR ResNet-20 of the CEC/TEEN line (D = 64, 8x8 map at 32 px).
* ``resnet18``: torchvision ResNet-18 without pooling/fc (D = 512, 7x7 map at 224 px); ImageNet weights
  are read only from a local file (torch hub cache or ``backbone_weights``), never downloaded.
* ``tiny``: TinyConvNet for tests and the digits experiment (ours): conv 3x3 -> 16 -> conv -> 32,
  one 2x2 max-pool (8x8 input -> 4x4 map, D = 32).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from papers_shared.checkpoints import load_checkpoint, load_safetensors
from papers_shared.data.errors import DatasetNotFoundError
from papers_shared.errors import CheckpointError

__all__ = ["ResNet12", "ResNet20", "TinyConvNet", "build_backbone", "resnet18_features"]


class TinyConvNet(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.out_dim = 2 * width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Block12(nn.Module):
    """ResNet-12 block: three 3x3 conv-BN-LeakyReLU(0.1), 1x1 conv shortcut, 2x2 max-pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            act,
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            act,
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.short(x))


class ResNet12(nn.Module):
    def __init__(self, in_channels: int = 3, filters: tuple[int, ...] = (64, 160, 320, 640)) -> None:
        super().__init__()
        chans = (in_channels, *filters)
        self.layers = nn.Sequential(*[_Block12(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.out_dim = filters[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.short(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3 stages x 3 basic blocks, widths 16/32/64."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, cin = [], 16
        for i, w in enumerate((16, 32, 64)):
            for j in range(3):
                blocks.append(_Basic(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


RESNET18_FILE = "resnet18-f37072fd.pth"


def _resnet18_weights_path(path: str | None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
    else:
        p = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    if not p.is_file():
        raise DatasetNotFoundError(
            "ResNet-18 ImageNet weights",
            p,
            "Run torchvision.models.resnet18(weights='IMAGENET1K_V1') once on a machine with internet "
            "(it caches the file in the torch hub folder), or set model.backbone_weights to a local file.",
        )
    return p


class _ResNet18Features(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*list(net.children())[:-2])
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def resnet18_features(
    in_channels: int = 3, pretrained: bool = False, weights: str | None = None
) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if pretrained:
        path = _resnet18_weights_path(weights)
        if path.suffix == ".safetensors":
            state, _ = load_safetensors(path)
        else:
            state = load_checkpoint(path)  # weights_only: a file that would run code is refused
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path} is not a torchvision resnet18 state dict ({first})") from None
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return _ResNet18Features(net)


def build_backbone(name: str, in_channels: int = 3, pretrained: bool = False, weights: str | None = None):
    """Backbone by name; every returned module has ``out_dim`` (D) and returns ``[B, D, H, W]``."""
    if name == "tiny":
        return TinyConvNet(in_channels)
    if name == "resnet12":
        return ResNet12(in_channels)
    if name == "resnet20":
        return ResNet20(in_channels)
    if name == "resnet18":
        return resnet18_features(in_channels, pretrained, weights)
    raise ValueError(f"unknown backbone {name!r}; use tiny, resnet12, resnet20 or resnet18")
