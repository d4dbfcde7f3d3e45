import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from esma import EasySampleBank, EasySampleMatchingLoss, EsmaAttack, EsmaTrainer
from papers_shared.attacks import MIFGSM, linf_distance, tiny_cnn


@pytest.fixture
def source():
    return tiny_cnn(10, 3, width=8, seed=0).eval()


def test_stage2_gradient_flow(tiny_gen, source):
    bank = EasySampleBank(torch.randn(4, 10), [0, 1, 2, 3])
    cond = {
        n for n, p in tiny_gen.named_parameters() if any(p is q for q in tiny_gen.conditioning_parameters())
    }
    before = {n: p.detach().clone() for n, p in tiny_gen.named_parameters()}
    src_before = {n: p.detach().clone() for n, p in source.named_parameters()}
    tr = EsmaTrainer(tiny_gen, source, bank, eps_train=0.1, lr=1e-3)
    loss = tr.train_step(torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, -1, 0]))
    assert loss > 0
    changed = {n for n, p in tiny_gen.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and not changed & cond
    # every backbone tensor with a non-trivial gradient path moved
    assert "head.0.weight" in changed and "tail.2.weight" in changed
    assert all(torch.equal(src_before[n], p) for n, p in source.named_parameters())
    assert all(not p.requires_grad for p in source.parameters())


def test_stage2_masked_batch_gives_zero_loss(tiny_gen, source):
    bank = EasySampleBank(torch.randn(4, 10), [0, 1, 2, 3])
    tr = EsmaTrainer(tiny_gen, source, bank)
    t = torch.tensor([1, 2])
    assert tr.train_step(torch.rand(2, 3, 16, 16), t.clone(), target_idx=t) == 0.0


def test_trainer_rejects_bad_input(tiny_gen, source):
    bank = EasySampleBank(torch.randn(3, 10), [0, 1, 2])
    with pytest.raises(ValueError, match="targets"):
        EsmaTrainer(tiny_gen, source, bank)
    tr = EsmaTrainer(tiny_gen, source, EasySampleBank(torch.randn(4, 10), [0, 1, 2, 3]))
    x = torch.rand(2, 3, 16, 16)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        tr.train_step(x, torch.tensor([0, 1]))


def test_fit_checkpoint_and_resume(tmp_path, source):
    from esma import EsmaGenerator, load_generator

    def make():
        torch.manual_seed(0)
        return EsmaGenerator(4, ch=16, ch_mult=(1, 2))

    bank = EasySampleBank(torch.randn(4, 10), [3, 5, 7, 9])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8)
    y = torch.tensor([3, 5, 7, 9, 3, 5, 1, 2])
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False, generator=g)
    full = EsmaTrainer(make(), source, bank, eps_train=0.1, lr=1e-3, seed=1)
    full.fit(loader, epochs=2, progress=False)
    part = EsmaTrainer(make(), source, bank, eps_train=0.1, lr=1e-3, seed=1)
    part.fit(loader, epochs=1, ckpt_dir=tmp_path, ckpt_every=1, progress=False)
    resumed = EsmaTrainer(make(), source, bank, eps_train=0.1, lr=1e-3, seed=1)
    resumed.fit(loader, epochs=2, ckpt_dir=tmp_path, resume=True, progress=False)
    assert resumed.step == 4 and resumed.epoch == 2
    assert resumed.history == pytest.approx(full.history, rel=1e-5)
    gen, ids = load_generator(tmp_path / "generator.safetensors")
    assert ids == [3, 5, 7, 9]
    for a, b in zip(gen.state_dict().values(), full.generator.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_fit_on_a_dataset_equals_fit_on_its_loader(source):
    """The sampler path (what torchrun shards) sees the same batches as a DataLoader over the same
    permutation: DistributedSampler(seed) with one replica = randperm(generator seeded with seed)."""
    from esma import EsmaGenerator

    def make():
        torch.manual_seed(0)
        return EsmaGenerator(4, ch=16, ch_mult=(1, 2))

    bank = EasySampleBank(torch.randn(4, 10), [3, 5, 7, 9])
    ds = TensorDataset(torch.rand(12, 3, 8, 8), torch.tensor([3, 5, 7, 9] * 3))
    a = EsmaTrainer(make(), source, bank, eps_train=0.1, lr=1e-3, seed=2)
    a.fit(ds, epochs=2, batch_size=4, progress=False)
    perm = [torch.randperm(12, generator=torch.Generator().manual_seed(2 + e)).tolist() for e in range(2)]
    batches = [ds[p[i : i + 4]] for p in perm for i in range(0, 12, 4)]
    b = EsmaTrainer(make(), source, bank, eps_train=0.1, lr=1e-3, seed=2)
    b.fit(batches, epochs=1, progress=False)
    assert a.step == b.step == 6 and a.history == pytest.approx(b.history, rel=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        a.fit(ds, epochs=3, progress=False)


def test_bf16_inference_stays_close_to_fp32(tiny_gen):
    from esma.attack import InferenceGenerator, cpu_has_native_bf16

    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    t = torch.tensor([24, 99, 245, 344, 24, 99])
    fp32 = EsmaAttack(tiny_gen, [24, 99, 245, 344], eps=8 / 255)
    bf16 = EsmaAttack(tiny_gen, [24, 99, 245, 344], eps=8 / 255, precision="bf16")
    tiny_gen.train()
    a = fp32(x, t)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = bf16(x, t)
    slow = [w for w in caught if "native bf16" in str(w.message)]
    assert len(slow) == (0 if cpu_has_native_bf16() else 1)
    assert tiny_gen.training  # the generator's mode is restored
    assert b.dtype == torch.float32 and float(linf_distance(b, x).max()) <= 8 / 255 + 1e-6
    assert 0 < float((a - b).abs().max()) <= 8 / 255  # bf16 moves pixels, never past the budget
    assert float((a - b).abs().mean()) < 2e-3
    assert bf16.describe()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        InferenceGenerator(tiny_gen, precision="fp16")


def test_generator_body_compiles_as_one_graph(tiny_gen):
    """``fullgraph=True`` fails on any graph break; the ``eager`` backend checks the capture without the
    minutes of C++ compilation that inductor needs on CPU (the benchmark measures inductor)."""
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([24, 99])
    eager = EsmaAttack(tiny_gen, [24, 99, 245, 344], eps=8 / 255)(x, t)
    compiled = EsmaAttack(tiny_gen, [24, 99, 245, 344], eps=8 / 255, compile=True, compile_backend="eager")
    assert torch.allclose(eager, compiled(x, t), atol=1e-6)


def test_attack_budget_range_and_label_mapping(tiny_gen):
    atk = EsmaAttack(tiny_gen, [24, 99, 245, 344], eps=8 / 255)
    x = torch.rand(5, 3, 16, 16)
    adv = atk(x, torch.tensor([24, 99, 245, 344, 24]))
    assert adv.shape == x.shape and not adv.requires_grad
    assert float(linf_distance(adv, x).max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert atk.targeted
    adv2 = atk(x, 24)
    assert torch.equal(adv2[0], adv[0])
    with pytest.raises(ValueError, match="not among"):
        atk(x, torch.tensor([1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(x * 2, torch.full((5,), 24))
    with pytest.raises(ValueError, match="class ids"):
        EsmaAttack(tiny_gen, [1, 2])


def test_es_loss_plugs_into_iterative_attack(source):
    bank = EasySampleBank(torch.randn(10, 10) * 3, list(range(10)))
    loss = EasySampleMatchingLoss(bank)
    z = bank.anchors[[2, 5]].clone()
    assert loss(z, torch.tensor([2, 5])).item() == 0.0
    assert loss(z + 0.5, torch.tensor([2, 5])).item() == pytest.approx(10 * 0.125)
    x = torch.rand(4, 3, 8, 8)
    t = torch.tensor([1, 2, 3, 4])
    atk = MIFGSM(source, eps=0.1, alpha=0.02, steps=5, targeted=True, loss=loss)
    adv = atk(x, t)
    assert float(linf_distance(adv, x).max()) <= 0.1 + 1e-6
    with torch.no_grad():
        assert loss(source(adv), t) < loss(source(x), t)
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_projection_and_smoothing_invariants(tiny_gen):
    from papers_shared.attacks import generator_smoothing, project_generated

    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    u = torch.rand(3, 3, 16, 16) * 1.4 - 0.2
    p = project_generated(u, x, 0.05)
    assert float((p - x).abs().max()) <= 0.05 + 1e-6 and float(p.min()) >= 0 and float(p.max()) <= 1
    assert torch.equal(project_generated(p, x, 0.05), p)  # idempotent
    s = generator_smoothing(3, 1.0)
    assert torch.allclose(s.kernel.sum(dim=(1, 2, 3)), torch.ones(3))
    const = torch.full((1, 3, 8, 8), 0.7)
    out = s(const)
    assert out.shape == const.shape
    assert torch.allclose(out[..., 1:-1, 1:-1], const[..., 1:-1, 1:-1], atol=1e-6)
    assert float(out[0, 0, 0, 0]) < 0.7  # zero-padded border darkens
    atk = EsmaAttack(tiny_gen, [0, 1, 2, 3], eps=0.05)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        atk(bad, torch.zeros(3, dtype=torch.long))


def test_legacy_double_normalize_feeds_normalized_images(tiny_gen):
    from papers_shared.attacks import IMAGENET_MEAN, IMAGENET_STD, ImageNetWrapper

    net = tiny_cnn(10, 3, width=8, seed=0).eval()
    wrapped = ImageNetWrapper(net)
    bank = EasySampleBank(torch.randn(4, 10), [0, 1, 2, 3])
    x = torch.rand(3, 3, 16, 16)
    tgt = torch.tensor([0, 1, 2])
    src = torch.tensor([-1, -1, -1])
    clean = EsmaTrainer(tiny_gen, wrapped, bank, eps_train=0.1)
    legacy = EsmaTrainer(tiny_gen, wrapped, bank, eps_train=0.1, legacy_double_normalize=True)
    tiny_gen.eval()
    with torch.no_grad():
        adv = clean.attack.perturb(x, tgt)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        twice = net((((adv - mean) / std) - mean) / std)
        from esma import esma_matching_loss

        assert legacy.loss(x, src, tgt).item() == pytest.approx(
            esma_matching_loss(twice, bank.anchors, tgt).item(), rel=1e-5
        )
        assert clean.loss(x, src, tgt).item() != pytest.approx(legacy.loss(x, src, tgt).item())
