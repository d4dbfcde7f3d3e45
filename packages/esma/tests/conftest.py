import pytest
import torch
from torch import nn

from papers_shared.testing import CodeRunningPickle

torch.set_num_threads(1)


class FixedLogits(nn.Module):
    """Classifier that looks up fixed logits per sample id stored in pixel [0, 0, 0] (value = id / 100),
    plus a tiny input-dependent term so gradients exist: ``z = table[id] + scale * sum(x) * w``."""

    def __init__(self, table: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("scales", scales)

    def forward(self, x):
        ids = torch.round(x[:, 0, 0, 0].detach() * 100).long()
        w = torch.linspace(-1, 1, self.table.shape[1], device=x.device)
        s = x.flatten(1)[:, 1:].sum(1, keepdim=True)
        return self.table[ids] + self.scales[ids, None] * s * w


@pytest.fixture
def tiny_gen():
    from esma import EsmaGenerator

    torch.manual_seed(0)
    return EsmaGenerator(4, ch=16, ch_mult=(1, 2))


@pytest.fixture
def tiny_bank():
    from esma import EasySampleBank

    torch.manual_seed(1)
    return EasySampleBank(anchors=torch.randn(4, 10), class_ids=[3, 5, 7, 9], kind="easy", q=2)


@pytest.fixture
def fixed_logits_cls():
    return FixedLogits


_Evil = CodeRunningPickle  # a crafted pickle that creates a file when loaded


@pytest.fixture
def evil_file(tmp_path):
    """``(path, target)``: a torch file holding a crafted pickle that would create ``target``."""
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "esma-generator-v1", "state_dict": {"w": torch.zeros(1)}, "x": _Evil(target)}, path)
    return path, target


@pytest.fixture
def refused():
    """``check(exc_info, path, target)``: the error is one line naming the file, and nothing ran."""

    def check(exc_info, path, target) -> None:
        msg = str(exc_info.value)
        assert str(path) in msg and "\n" not in msg and "could run code" in msg
        assert not target.exists()

    return check
