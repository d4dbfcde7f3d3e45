"""Generator inference options: ``bf16_mode`` (autocast vs a cached bf16 weight copy) and
``channels_last``. On a CPU without native bf16 these run on PyTorch's slow reference path (correct,
slow), so the generator and images are tiny."""

import warnings

import pytest
import torch

from esma import EsmaAttack, InferenceGenerator
from papers_shared.attacks import linf_distance

# bf16 keeps 8 significant bits (spacing 2^-8 on [0.5, 1)); through the tiny generator's 20-odd layers
# the output image in (0, 1) moves by ~6e-3 on average and ~0.035 at most under either bf16 mode
# (measured), so the stated tolerance is 1e-2 mean / 6e-2 max absolute difference from fp32.
BF16_MEAN_TOL, BF16_MAX_TOL = 1e-2, 6e-2


@pytest.fixture
def xt():
    torch.manual_seed(0)
    return torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])


def _run(inf: InferenceGenerator, x, t):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*native bf16")
        return inf(x, t)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_weights_mode_is_close_to_fp32_and_casts_once(tiny_gen, xt, channels_last):
    x, t = xt
    tiny_gen.eval()
    with torch.no_grad():
        ref = tiny_gen(x, t)
    auto = _run(InferenceGenerator(tiny_gen, "bf16", bf16_mode="autocast"), x, t)
    inf = InferenceGenerator(tiny_gen, "bf16", bf16_mode="weights", channels_last=channels_last)
    assert inf.mode(x.device) == "weights"
    out = _run(inf, x, t)
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.is_contiguous()
    err = (out - ref).abs()
    assert 0 < float(err.mean()) <= BF16_MEAN_TOL and float(err.max()) <= BF16_MAX_TOL
    # no worse than autocast beyond bf16 noise (the normalisations also run in bf16 here)
    assert float(err.mean()) <= 1.5 * float((auto - ref).abs().mean())
    copy = inf._copy
    assert copy is not None and copy is not tiny_gen
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(p.dtype == torch.float32 for p in tiny_gen.parameters())  # the generator is untouched
    if channels_last:
        conv = copy.head[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    again = _run(inf, x, t)
    assert inf._copy is copy and torch.equal(again, out)  # the copy is reused: no per-call weight casts


def test_fp32_channels_last_matches_fp32(tiny_gen, xt):
    x, t = xt
    tiny_gen.eval()
    with torch.no_grad():
        ref = tiny_gen(x, t)
    inf = InferenceGenerator(tiny_gen, "fp32", channels_last=True)
    assert inf.mode(x.device) == "fp32"
    assert torch.allclose(_run(inf, x, t), ref, atol=1e-5)
    assert inf._copy.head[0].weight.dtype == torch.float32


def test_auto_mode_is_autocast_on_cpu_and_weights_on_cuda(tiny_gen):
    inf = InferenceGenerator(tiny_gen, "bf16")
    assert inf.bf16_mode == "auto"
    assert inf.mode(torch.device("cpu")) == "autocast" and inf.mode(torch.device("cuda")) == "weights"
    assert InferenceGenerator(tiny_gen, "fp32", bf16_mode="weights").mode(torch.device("cpu")) == "fp32"


def test_cached_copy_is_refreshed_when_weights_change(tiny_gen, xt):
    x, t = xt
    tiny_gen.eval()
    inf = InferenceGenerator(tiny_gen, "bf16", bf16_mode="weights")

    def fresh():  # what a new InferenceGenerator gives for the current weights
        return _run(InferenceGenerator(tiny_gen, "bf16", bf16_mode="weights"), x, t)

    before = _run(inf, x, t)
    first = inf._copy
    # an optimiser step (in-place update under no_grad)
    opt = torch.optim.SGD(tiny_gen.parameters(), lr=0.5)
    tiny_gen(x, t).square().mean().backward()
    opt.step()
    after = _run(inf, x, t)
    assert inf._copy is not first and not torch.equal(after, before) and torch.equal(after, fresh())
    # load_state_dict of other weights
    second = inf._copy
    state = {k: v + 0.05 for k, v in tiny_gen.state_dict().items()}
    tiny_gen.load_state_dict(state)
    loaded = _run(inf, x, t)
    assert inf._copy is not second and torch.equal(loaded, fresh())
    # a replaced parameter
    third = inf._copy
    tiny_gen.tail[2].bias = torch.nn.Parameter(torch.full_like(tiny_gen.tail[2].bias, 0.3))
    replaced = _run(inf, x, t)
    assert inf._copy is not third and torch.equal(replaced, fresh())
    # an update that bypasses autograd's version counter is not seen (documented): refresh() rebuilds
    tiny_gen.tail[2].bias.data.add_(0.2)
    assert torch.equal(_run(inf, x, t), replaced)
    inf.refresh()
    assert torch.equal(_run(inf, x, t), fresh())


def test_attack_passes_the_switches_and_refuses_bad_values(tiny_gen):
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([24, 99])
    atk = EsmaAttack(tiny_gen, [24, 99, 245, 344], eps=8 / 255, precision="bf16", bf16_mode="weights",
                     channels_last=True)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*native bf16")
        adv = atk(x, t)
    assert adv.dtype == torch.float32 and float(linf_distance(adv, x).max()) <= 8 / 255 + 1e-6
    d = atk.describe()
    assert d["precision"] == "bf16" and d["bf16_mode"] == "weights" and d["channels_last"] is True
    with pytest.raises(ValueError, match="bf16_mode"):
        InferenceGenerator(tiny_gen, "bf16", bf16_mode="weight")
    with pytest.raises(ValueError, match="bf16_mode"):
        EsmaAttack(tiny_gen, [24, 99, 245, 344], precision="bf16", bf16_mode="fp16")
