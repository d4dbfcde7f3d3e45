import pytest
import torch
from torch import nn

from g2g_fscil.config import G2GConfig
from g2g_fscil.graphs import cosine_adjacency, represent
from g2g_fscil.interaction import weightings
from g2g_fscil.memory import ExplicitMemory, class_stats, merge_stats
from g2g_fscil.model import G2GNet


def _proj(d_in=5, d_out=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def test_memory_write_means_and_mean_keys():
    """Z_c = mean over supports of rho(g(f_i)); V2V key = g(mean GAP) (C-FSCIL align() prototypes)."""
    proj = _proj()
    maps = torch.randn(6, 3, 5)
    labels = torch.tensor([1, 1, 4, 4, 4, 1])
    mem = ExplicitMemory(5, 4, 3)
    mem.write(labels, maps, proj, "tanh")
    assert mem.class_ids.tolist() == [1, 4]
    with torch.no_grad():
        sel = labels == 4
        ref_nodes = torch.tanh(proj(maps[sel])).mean(0)
        ref_key = proj(maps[sel].mean(1).mean(0))
    torch.testing.assert_close(mem.nodes[1], ref_nodes)
    torch.testing.assert_close(mem.keys[1], ref_key)
    torch.testing.assert_close(mem.feats[1], maps[sel].mean(0))
    torch.testing.assert_close(mem.adj[1], cosine_adjacency(ref_nodes))


def test_memory_old_rows_bitwise_unchanged_and_duplicates_rejected():
    proj = _proj()
    mem = ExplicitMemory(5, 4, 3)
    mem.write(torch.tensor([0, 0, 1]), torch.randn(3, 3, 5), proj)
    before = {k: v.clone() for k, v in mem.state_dict().items()}
    mem.write(torch.tensor([2, 3]), torch.randn(2, 3, 5), proj)
    for k, v in before.items():
        assert torch.equal(getattr(mem, k)[: v.shape[0]], v), k
    assert len(mem) == 4
    with pytest.raises(ValueError, match="already in the explicit memory"):
        mem.write(torch.tensor([3]), torch.randn(1, 3, 5), proj)


def test_memory_rebuild_equals_recompute_and_streamed_stats():
    proj = _proj()
    maps = torch.randn(8, 3, 5)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    mem = ExplicitMemory(5, 4, 3)
    # streamed in two chunks == one shot
    st = merge_stats(class_stats(labels[:4], maps[:4], proj), class_stats(labels[4:], maps[4:], proj))
    mem.write_stats(st)
    mem2 = ExplicitMemory(5, 4, 3)
    mem2.write(labels, maps, proj)
    torch.testing.assert_close(mem.nodes, mem2.nodes)
    torch.testing.assert_close(mem.keys, mem2.keys)
    with torch.no_grad():
        proj.weight.add_(0.3)
    mem.rebuild(proj, "tanh")
    with torch.no_grad():
        ref = torch.tanh(proj(mem.feats))
        ref_keys = proj(mem.feats.mean(1))
    torch.testing.assert_close(mem.nodes, ref)
    torch.testing.assert_close(mem.keys, ref_keys)
    torch.testing.assert_close(mem.adj, cosine_adjacency(ref))


def test_memory_state_dict_roundtrip_resizes():
    proj = _proj()
    mem = ExplicitMemory(5, 4, 3)
    mem.write(torch.tensor([0, 1, 1]), torch.randn(3, 3, 5), proj)
    fresh = ExplicitMemory(5, 4, 3)
    fresh.load_state_dict(mem.state_dict())
    for k, v in mem.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_memory_bad_inputs():
    proj = _proj()
    mem = ExplicitMemory(5, 4, 3)
    with pytest.raises(ValueError, match=r"\[K, M, D\]"):
        mem.write(torch.tensor([0]), torch.randn(3, 5), proj)
    with pytest.raises(ValueError, match="labels"):
        mem.write(torch.tensor([0, 1]), torch.randn(3, 3, 5), proj)
    with pytest.raises(ValueError, match="NaN"):
        mem.write(torch.tensor([0]), torch.full((1, 3, 5), float("nan")), proj)
    with pytest.raises(ValueError, match="memory expects"):
        mem.write(torch.tensor([0]), torch.randn(1, 2, 5), proj)


def test_model_shapes_forward_predict_and_eval_sharpening(tiny_cfg):
    net = G2GNet(tiny_cfg, num_classes=3, image_size=8)
    assert net.num_nodes == 4
    x = torch.rand(6, 1, 8, 8)
    z, a = net.local_graph(x)
    assert z.shape == (6, 4, 16) and a.shape == (6, 4, 4)
    with pytest.raises(RuntimeError, match="empty"):
        net(x)
    net.write_memory(torch.tensor([5, 5, 7, 7, 9, 9]), x)
    net.eval()
    w = net(x)
    assert w.shape == (6, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    ref = weightings(net.memory_similarity(x), "abs", tiny_cfg.beta)  # abs at evaluation (C-FSCIL)
    torch.testing.assert_close(w, ref)
    assert set(net.predict(x).tolist()) <= {5, 7, 9}


def test_model_m1_memory_equals_v2v_ranking(tiny_cfg):
    """With local_pool=1 (M = 1) and node_proto="rho_key", G2G and V2V memory read-outs are equal."""
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_cfg, local_pool=1, node_proto="rho_key")
    g2g = G2GNet(cfg, 3, image_size=8)
    v2v = G2GNet(dataclasses.replace(cfg, interaction="v2v"), 3, image_size=8)
    v2v.load_state_dict(g2g.state_dict())
    x = torch.rand(10, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    g2g.write_memory(y, x)
    v2v.write_memory(y, x)
    torch.testing.assert_close(g2g.memory_similarity(x), v2v.memory_similarity(x), atol=1e-5, rtol=0)
    # the default (mean of rho) differs from V2V's rho of the mean, but only slightly
    g2g_default = G2GNet(dataclasses.replace(cfg, node_proto="mean_rho"), 3, image_size=8)
    g2g_default.load_state_dict(g2g.state_dict(), strict=False)
    g2g_default.memory.reset()
    g2g_default.write_memory(y, x)
    diff = (g2g_default.memory_similarity(x) - v2v.memory_similarity(x)).abs().max()
    assert 0 < float(diff.detach()) < 0.2


def test_model_bad_input_errors(tiny_cfg):
    net = G2GNet(tiny_cfg, 3, image_size=8)
    with pytest.raises(ValueError, match="expected images"):
        net.local_maps(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        net.local_maps(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        net.local_maps(torch.zeros(2, 1, 8, 8, dtype=torch.long))


def test_model_save_load_roundtrip(tiny_cfg, tmp_path):
    from papers_shared.checkpoints import load_safetensors, save_safetensors

    net = G2GNet(tiny_cfg, 3, image_size=8)
    x = torch.rand(6, 1, 8, 8)
    net.write_memory(torch.tensor([0, 0, 1, 1, 2, 2]), x)
    save_safetensors(net.state_dict(), tmp_path / "m.safetensors")
    fresh = G2GNet(tiny_cfg, 3, image_size=8)
    fresh.load_state_dict(load_safetensors(tmp_path / "m.safetensors")[0])
    net.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), net(x))


def test_backbones_build_and_shapes():
    from g2g_fscil.backbones import build_backbone

    assert build_backbone("resnet12")(torch.rand(1, 3, 32, 32)).shape == (1, 640, 2, 2)
    assert build_backbone("resnet20")(torch.rand(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    assert build_backbone("resnet18")(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg")


def test_resnet18_missing_weights_clear_error(tmp_path):
    from g2g_fscil.backbones import build_backbone
    from papers_shared.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="ResNet-18"):
        build_backbone("resnet18", pretrained=True, weights=str(tmp_path / "none.pth"))


def test_resnet18_weights_crafted_pickle_refused_and_wrong_dict(tmp_path, crafted_pickle):
    """The ResNet-18 weights loader never unpickles: a file that would run code is refused, unexecuted."""
    from g2g_fscil.backbones import build_backbone
    from papers_shared.errors import CheckpointError

    target = crafted_pickle(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth") as err:
        build_backbone("resnet18", pretrained=True, weights=str(tmp_path / "evil.pth"))
    assert "\n" not in str(err.value) and not target.exists()
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a torchvision resnet18 state dict"):
        build_backbone("resnet18", pretrained=True, weights=str(tmp_path / "other.pth"))


def test_representation_used_for_nodes(tiny_cfg):
    net = G2GNet(tiny_cfg, 3, image_size=8)
    x = torch.rand(2, 1, 8, 8)
    f = net.local_maps(x)
    q, z, a = net.embed(f)
    torch.testing.assert_close(z, represent(net.proj(f), "tanh"))
    torch.testing.assert_close(q, net.proj(f.mean(1)))
    assert G2GConfig().feat_dim == 512 and G2GConfig().alpha == 0.5


def test_prepared_readout_equals_reference_and_cache_invalidates():
    from g2g_fscil.interaction import g2g_similarity, g2g_similarity_prepared

    proj = _proj()
    mem = ExplicitMemory(5, 4, 3)
    mem.write(torch.tensor([0, 0, 1, 2]), torch.randn(4, 3, 5), proj)
    z = torch.tanh(torch.randn(6, 3, 4))
    a = cosine_adjacency(z)
    ref = g2g_similarity(z, a, mem.nodes, mem.adj, 0.3)
    torch.testing.assert_close(g2g_similarity_prepared(z, a, mem.prepared(0.3)), ref)
    for alpha in (0.0, 1.0):  # one term only
        ref_a = g2g_similarity(z, a, mem.nodes, mem.adj, alpha)
        torch.testing.assert_close(g2g_similarity_prepared(z, a, mem.prepared(alpha)), ref_a)
    first = mem.prepared(0.3)
    assert mem.prepared(0.3) is first  # cached
    assert mem.prepared(0.5) is not first  # another alpha
    first = mem.prepared(0.3)
    mem.write(torch.tensor([3]), torch.randn(1, 3, 5), proj)
    assert mem.prepared(0.3) is not first and mem.prepared(0.3).nodes_t.shape[1] == 4
    with torch.no_grad():
        proj.weight.mul_(2)
    before = mem.prepared(0.3)
    mem.rebuild(proj)
    assert mem.prepared(0.3) is not before
    torch.testing.assert_close(
        g2g_similarity_prepared(z, a, mem.prepared(0.3)), g2g_similarity(z, a, mem.nodes, mem.adj, 0.3)
    )


def test_node_dim_split_gives_key_sized_graphs(tiny_cfg):
    import dataclasses

    from papers_shared.errors import ConfigError

    net = G2GNet(dataclasses.replace(tiny_cfg, node_dim="split"), 3, image_size=8)
    z, a = net.local_graph(torch.rand(2, 1, 8, 8))
    assert z.shape == (2, 4, tiny_cfg.feat_dim // 4)  # M nodes of d/M dims: M * d/M = d, a V2V key's size
    assert net.memory.nodes.shape[-1] == tiny_cfg.feat_dim // 4
    with pytest.raises(ConfigError, match="not divisible"):
        G2GConfig(feat_dim=30, local_pool=2, node_dim="split")
    with pytest.raises(ConfigError, match="not divisible"):  # M from the map when local_pool is null
        G2GNet(dataclasses.replace(tiny_cfg, local_pool=None, feat_dim=30, node_dim="split"), 3, image_size=8)
