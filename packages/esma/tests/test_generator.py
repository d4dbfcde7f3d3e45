import pytest
import torch

from esma import GCT, EsmaGenerator, load_generator, save_generator
from esma.generator import LinearAttention
from papers_shared.errors import CheckpointError


def test_default_parameter_count_and_size():
    g = EsmaGenerator(10)
    assert g.num_parameters() == 4_397_635
    assert g.size_mb() == pytest.approx(16.78, abs=0.01)
    assert len(g.res_blocks()) == 14


def test_output_shape_and_range(tiny_gen):
    x = torch.rand(3, 3, 16, 16)
    y = tiny_gen(x, torch.tensor([0, 1, 3]))
    assert y.shape == x.shape
    assert bool((y > 0).all()) and bool((y < 1).all())


def test_bad_inputs_raise(tiny_gen):
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_gen(torch.rand(1, 3, 15, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        tiny_gen(torch.rand(1, 1, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="target_idx"):
        tiny_gen(torch.rand(2, 3, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        tiny_gen(torch.rand(1, 3, 16, 16), torch.tensor([4]))
    with pytest.raises(ValueError, match="integer"):
        tiny_gen(torch.rand(1, 3, 16, 16), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="divisible by 16"):
        EsmaGenerator(4, ch=24, ch_mult=(1, 2))


def test_gct_identity_at_init():
    gct = GCT(16)
    x = torch.randn(2, 16, 5, 5)
    assert torch.allclose(gct(x), x)
    with torch.no_grad():
        gct.gamma.fill_(1.0)
    assert not torch.allclose(gct(x), x)


def test_gct_equation_hand_value():
    gct = GCT(2)
    with torch.no_grad():
        gct.gamma.fill_(1.0)
    x = torch.tensor([[[[3.0, 4.0]], [[0.0, 1.0]]]])  # channel norms 5 and 1
    s = torch.tensor([5.0, 1.0])  # alpha = 1, eps negligible
    n = 1.0 / torch.sqrt((s**2).mean())
    gate = 1 + torch.tanh(s * n)
    assert torch.allclose(gct(x), x * gate.view(1, 2, 1, 1), atol=1e-5)


def test_linear_attention_matches_explicit_formula():
    torch.manual_seed(0)
    att = LinearAttention(16)
    h = torch.randn(2, 16, 3, 4)
    u = att.norm(h)
    kv = att.to_kv(u).flatten(2)
    k, v = kv[:, :16], kv[:, 16:]
    q = torch.softmax(k, 1) / 4.0
    kap = torch.softmax(k, 2)
    o = torch.einsum("bdn,ben,bdm->bem", kap, v, q).reshape(2, 16, 3, 4)
    ref = u + att.out(torch.nn.functional.gelu(att.out_norm(o)))
    assert torch.allclose(att(h), ref, atol=1e-5)


def test_padding_idx_row_zero_and_no_grad():
    g = EsmaGenerator(3, ch=16, ch_mult=(1, 2), embedding_padding_idx=0)
    w = g.target_embedding.embedding.weight
    assert torch.count_nonzero(w[0]) == 0
    y = g(torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2]))
    y.sum().backward()
    assert torch.count_nonzero(w.grad[0]) == 0 and torch.count_nonzero(w.grad[1]) > 0


def test_targets_change_output(tiny_gen):
    x = torch.rand(1, 3, 16, 16).repeat(2, 1, 1, 1)
    y = tiny_gen(x, torch.tensor([1, 2]))
    assert (y[0] - y[1]).abs().max() > 1e-6


def test_init_values():
    g = EsmaGenerator(2, ch=16, ch_mult=(1,))
    conv = g.head[0]
    assert torch.all(conv.bias == 0.1)
    lin = g.target_embedding.mlp[0]
    assert torch.all(lin.bias == 0) and lin.weight.std() < 0.02
    gn = g.head[2]
    assert torch.all(gn.weight == 1) and torch.all(gn.bias == 0)


def test_parameter_groups_partition(tiny_gen):
    cond = {id(p) for p in tiny_gen.conditioning_parameters()}
    back = {id(p) for p in tiny_gen.backbone_parameters()}
    assert cond and back and not cond & back
    assert cond | back == {id(p) for p in tiny_gen.parameters()}


def test_save_load_round_trip(tmp_path, tiny_gen):
    path = save_generator(tmp_path / "g.safetensors", tiny_gen, [3, 5, 7, 9], epoch=3)
    from esma.weights import is_safetensors

    assert is_safetensors(path)
    g2, ids = load_generator(path)
    assert ids == [3, 5, 7, 9]
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0, 3])
    tiny_gen.eval()
    g2.eval()
    assert torch.equal(tiny_gen(x, t), g2(x, t))
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.safetensors")
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt is not an ESMA generator"):
        load_generator(tmp_path / "bad.pt")


def test_legacy_pt_generator_still_loads(tmp_path, tiny_gen):
    from esma.generator import generator_kwargs

    old = {"format": "esma-generator-v1", "kwargs": generator_kwargs(tiny_gen), "state_dict": tiny_gen.state_dict(),
           "class_ids": [3, 5, 7, 9], "stage": 1}  # fmt: skip
    torch.save(old, tmp_path / "g.pt")
    g2, ids = load_generator(tmp_path / "g.pt")
    assert ids == [3, 5, 7, 9]
    assert all(torch.equal(a, b) for a, b in zip(g2.state_dict().values(), tiny_gen.state_dict().values()))


def test_generator_loader_refuses_crafted_pickle(evil_file, refused):
    path, target = evil_file
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    refused(err, path, target)


def test_damaged_or_foreign_generator_files(tmp_path, tiny_gen):
    path = save_generator(tmp_path / "g.safetensors", tiny_gen, [3, 5, 7, 9])
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_generator(tmp_path / "cut.safetensors")
    from esma import EasySampleBank

    EasySampleBank(torch.zeros(2, 3), [0, 1]).save(tmp_path / "bank.safetensors")
    with pytest.raises(CheckpointError, match="not an ESMA generator file"):
        load_generator(tmp_path / "bank.safetensors")
