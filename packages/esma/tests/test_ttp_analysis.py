import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from esma import TTPAttack, TTPGenerator, TTPTrainer, consistency_vs_easiness, load_ttp_checkpoint, ttp_loss
from esma.baselines.ttp import random_rotation, save_ttp_generator
from papers_shared.attacks import linf_distance, tiny_cnn
from papers_shared.errors import CheckpointError


def test_ttp_generator_param_count_and_checkpoint(tmp_path):
    g = TTPGenerator()
    assert g.num_parameters() == 7_841_411
    small = TTPGenerator(ngf=8, n_blocks=2)
    torch.save(small.state_dict(), tmp_path / "netG.pth")  # a released TTP checkpoint: a plain state dict
    g2 = load_ttp_checkpoint(tmp_path / "netG.pth")
    assert g2.ngf == 8 and g2.n_blocks == 2
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(small.eval()(x), g2(x))
    save_ttp_generator(tmp_path / "ttp.safetensors", small, target=24)
    g3 = load_ttp_checkpoint(tmp_path / "ttp.safetensors")
    assert g3.ngf == 8 and g3.n_blocks == 2 and torch.equal(g3(x), g2(x))
    with pytest.raises(FileNotFoundError, match="TTP checkpoint"):
        load_ttp_checkpoint(tmp_path / "none.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth is not a TTP generator"):
        load_ttp_checkpoint(tmp_path / "list.pth")
    torch.save({"block1.1.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="wrong.pth does not hold a TTP"):
        load_ttp_checkpoint(tmp_path / "wrong.pth")


def test_ttp_loader_refuses_crafted_pickle(evil_file, refused):
    path, target = evil_file
    with pytest.raises(CheckpointError) as err:
        load_ttp_checkpoint(path)
    refused(err, path, target)


def test_ttp_loss_zero_when_views_match_target_distribution():
    z = torch.randn(4, 6)
    # identical rows -> KL terms vanish; similarity matrices identical -> sim terms vanish
    assert ttp_loss(z, z, z, z).item() == pytest.approx(0.0, abs=1e-5)
    assert ttp_loss(z, z, z, z, legacy_similarity_norm=True).item() == pytest.approx(0.0, abs=1e-5)
    assert ttp_loss(z + torch.randn(4, 6), z, z, z).item() > 0


def test_rotation_is_per_image_multiple_of_90():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float).view(2, 1, 3, 3).repeat(4, 1, 1, 1)
    r = random_rotation(x, torch.Generator().manual_seed(0))
    for xi, ri in zip(x, r):
        assert any(torch.equal(torch.rot90(xi, k, (1, 2)), ri) for k in range(4))


def test_ttp_trainer_step_and_attack():
    src = tiny_cnn(10, 3, 8, seed=0).eval()
    gen = TTPGenerator(ngf=8, n_blocks=1)
    tr = TTPTrainer(gen, src, eps_train=0.1, lr=1e-3)
    before = gen.block1[1].weight.detach().clone()
    loader = DataLoader(TensorDataset(torch.rand(8, 3, 8, 8), torch.zeros(8)), batch_size=4)
    match = DataLoader(TensorDataset(torch.rand(6, 3, 8, 8)), batch_size=4)
    hist = tr.fit(loader, match, epochs=1, progress=False)
    assert len(hist) == 2 and not torch.equal(before, gen.block1[1].weight)
    atk = TTPAttack({3: gen, 5: TTPGenerator(ngf=8, n_blocks=1)}, eps=0.05)
    x = torch.rand(4, 3, 8, 8)
    adv = atk(x, torch.tensor([3, 5, 3, 5]))
    assert float(linf_distance(adv, x).max()) <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="no TTP generator"):
        atk(x, torch.tensor([3, 4, 3, 3]))


def test_consistency_vs_easiness_bins():
    torch.manual_seed(0)
    x = torch.rand(40, 3, 8, 8)
    y = torch.randint(0, 10, (40,))
    m = tiny_cnn(10, 3, 8, seed=0).eval()
    out = consistency_vs_easiness([m, m], DataLoader(TensorDataset(x, y), batch_size=16), n_bins=4)
    assert out["count"] == [10.0] * 4
    assert out["loss_gap"] == [0.0] * 4 and out["agreement"] == [1.0] * 4  # identical models agree
    assert out["source_loss"] == sorted(out["source_loss"])
    with pytest.raises(ValueError, match="two models"):
        consistency_vs_easiness([m], [(x, y)])


def test_anchor_ablation_rows_and_errors():
    from esma import EasySampleBank, anchor_ablation

    src = tiny_cnn(10, 3, 8, seed=0).eval()
    vic = tiny_cnn(10, 3, 8, seed=1).eval()
    banks = {"easy": EasySampleBank(torch.randn(10, 10), list(range(10)), kind="easy")}
    x = torch.rand(6, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 3, 4, 5])
    out = anchor_ablation(src, {"v": vic}, banks, x, t, eps=0.1, alpha=0.05, steps=2, attack="dtmi")
    assert set(out) == {"easy", "ce"} and set(out["easy"]) == {"source", "v"}
    assert all(0.0 <= r <= 1.0 for row in out.values() for r in row.values())
    with pytest.raises(ValueError, match="attack must be"):
        anchor_ablation(src, {}, banks, x, t, attack="pgd")
    with pytest.raises(ValueError, match="same length"):
        anchor_ablation(src, {}, banks, x, t[:3])
