import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Small MLP with a LayerNorm, a 0-dim parameter and a head named ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 8))
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.body(x)) * self.temperature


def perturbed(model: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    import copy

    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    pre = TinyNet()
    fts = {f"t{i}": perturbed(pre, i + 1) for i in range(3)}
    return pre, fts
