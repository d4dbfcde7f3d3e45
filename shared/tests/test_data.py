import pytest
import torch

from papers_shared.data import (
    DatasetNotFoundError,
    cifar,
    digits_tensor_dataset,
    image_folder,
    load_digits_fscil,
    load_digits_tensors,
    nips17_dataset,
    stratified_split,
)
from papers_shared.data.graph import load_pyg_dataset, make_csbm_graph, make_gfscil_split, session_edge_mask
from papers_shared.data.hf import require_hub_model


def test_digits_tensors():
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert x.min() >= 0 and x.max() <= 1 and x.dtype == torch.float32
    x3, _ = load_digits_tensors(size=32, channels=3)
    assert x3.shape == (1797, 3, 32, 32)
    assert torch.equal(x3[:, 0], x3[:, 2])
    with pytest.raises(ValueError):
        load_digits_tensors(channels=2)


def test_stratified_split_disjoint_and_seeded():
    _, y = load_digits_tensors()
    tr, te = stratified_split(y, 0.3, seed=0)
    assert not torch.isin(tr, te).any() and tr.numel() + te.numel() == y.numel()
    assert torch.equal(te, stratified_split(y, 0.3, seed=0)[1])
    for c in range(10):
        frac = (y[te] == c).sum() / (y == c).sum()
        assert abs(float(frac) - 0.3) < 0.02
    ds = digits_tensor_dataset(size=16, channels=3, split="test")
    assert len(ds) == te.numel()


def test_digits_fscil():
    xtr, ytr, xte, yte, split = load_digits_fscil(base=6, ways=2, shots=5, seed=0)
    assert [s.classes for s in split] == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]
    assert split[1].train_idx.numel() == 10
    assert set(yte[split.test_idx_seen(2)].tolist()) == set(range(10))


def test_csbm_graph_properties():
    d = make_csbm_graph(num_classes=4, nodes_per_class=50, feat_dim=8, p_in=0.2, p_out=0.01, seed=0)
    ei = d.edge_index
    assert d.x.shape == (200, 8) and d.y.shape == (200,)
    assert (ei[0] != ei[1]).all()  # no self loops
    fwd = set(map(tuple, ei.t().tolist()))
    assert all((j, i) in fwd for i, j in fwd)  # undirected
    assert len(fwd) == ei.shape[1]  # no duplicates
    same = (d.y[ei[0]] == d.y[ei[1]]).float().mean()
    assert same > 0.8  # homophilous as asked
    # class means separate: nearest-mean accuracy well above chance
    mu = torch.stack([d.x[d.y == c].mean(0) for c in range(4)])
    assert (torch.cdist(d.x, mu).argmin(1) == d.y).float().mean() > 0.5
    d2 = make_csbm_graph(num_classes=4, nodes_per_class=50, feat_dim=8, seed=0)
    assert torch.equal(d2.x, make_csbm_graph(num_classes=4, nodes_per_class=50, feat_dim=8, seed=0).x)


def test_csbm_graph_depends_on_its_seed_only():
    torch.manual_seed(1)
    a = make_csbm_graph(num_classes=3, nodes_per_class=20, feat_dim=4, p_in=0.2, p_out=0.02, seed=5)
    torch.manual_seed(2)
    b = make_csbm_graph(num_classes=3, nodes_per_class=20, feat_dim=4, p_in=0.2, p_out=0.02, seed=5)
    c = make_csbm_graph(num_classes=3, nodes_per_class=20, feat_dim=4, p_in=0.2, p_out=0.02, seed=6)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_gfscil_split_clean_and_legacy():
    d = make_csbm_graph(num_classes=8, nodes_per_class=40, seed=1)
    split = make_gfscil_split(d.y, base_classes=4, ways=2, shots=5, seed=0)
    assert len(split) == 3
    split.check(shared_pool=True)
    for s in split.sessions[1:]:
        for c in s.classes:
            assert (d.y[s.support_idx] == c).sum() == 5
    legacy = make_gfscil_split(d.y, base_classes=4, ways=2, shots=5, seed=0, legacy=True)
    s1 = legacy[1]
    assert torch.isin(s1.support_idx, s1.test_idx).all()  # the documented official leak


def test_session_edge_mask():
    d = make_csbm_graph(num_classes=6, nodes_per_class=30, p_out=0.05, seed=2)
    m = session_edge_mask(d.edge_index, d.y, [0, 1, 2])
    kept = d.edge_index[:, m]
    assert torch.isin(d.y[kept], torch.tensor([0, 1, 2])).all()
    dropped = d.edge_index[:, ~m]
    assert (~torch.isin(d.y[dropped], torch.tensor([0, 1, 2]))).any(0).all()


def test_missing_data_errors_name_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        cifar(tmp_path, "cifar10")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        image_folder(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="images.csv"):
        nips17_dataset(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="CoraFull"):
        load_pyg_dataset("corafull", tmp_path)
    with pytest.raises(ValueError):
        cifar(tmp_path, "cifar7")


def test_missing_cifar_names_the_callers_download_key(tmp_path):
    """The error names the config key the caller uses for ``download`` (default ``data.download``)."""
    with pytest.raises(DatasetNotFoundError) as err:
        cifar(tmp_path, "cifar100")
    assert "the config key data.download=true" in str(err.value)
    with pytest.raises(DatasetNotFoundError) as err:
        cifar(tmp_path, "cifar100", download_key="download")
    msg = str(err.value)
    assert "the config key download=true" in msg and "data.download" not in msg
    assert "\n" not in msg
    with pytest.raises(DatasetNotFoundError) as err:
        cifar(tmp_path, "cifar10", download_key=None)
    msg = str(err.value)
    assert "config key" not in msg and "download=True" in msg and "cifar-10-batches-py" in msg


def test_hub_model_missing_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="not in the local HF cache"):
        require_hub_model("someone/not-a-real-model-xyz")
