import pytest
import torch
import torch.nn.functional as F

from icl_vmf.ckt_mha import CKTMHA, query_embedding
from icl_vmf.em import EMSchedule
from icl_vmf.losses import cl_vmf_loss
from icl_vmf.memory import VMFValueMemory


def _batch(n=8, seed=0, labels=(0, 1)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = torch.tensor([labels[i % len(labels)] for i in range(n)])
    return x, y


def _em(s1, em_steps=60):
    mem_opt = torch.optim.Adam(s1.memory.working_parameters(), lr=1e-2)
    proj_opt = torch.optim.Adam(s1.projection_parameters(), lr=1e-2)
    return EMSchedule(mem_opt, proj_opt, em_steps)


def _closure(s1, x, y):
    return lambda phase: cl_vmf_loss(s1.set2set_logits(x, y, phase), y)


def test_shapes_unit_norm_and_score_range(system1):
    x, y = _batch(5)
    H = system1.features(x)
    assert H.shape == (5, 17, 32)  # L = (16/4)^2 + 1
    C, T = system1.ckt(H)
    assert C.shape == (5, 17, 48) and T.shape == (5, 17, 16)
    z = system1.embed(x)
    assert z.shape == (5, 64)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    S = system1.set2set_logits(x, y)
    assert S.shape == (5, 5)
    system1.memory.consolidate(0)
    s, ids = system1.scores(x)
    assert s.shape == (5, 2) and ids.tolist() == [0, 1]
    assert s.min() >= -1 - 1e-6 and s.max() <= 1 + 1e-6
    system1.memory.consolidate(1)
    assert system1.scores(x)[0].shape == (5, 4)


def test_query_embedding_is_task_first_token_mean():
    C, T = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    z = query_embedding(C, T)
    expected = F.normalize(torch.cat([T.mean(1), C.mean(1)], dim=1), dim=1)
    torch.testing.assert_close(z, expected)
    with pytest.raises(ValueError):
        query_embedding(torch.randn(2, 3, 4), torch.randn(2, 4, 2))


def test_ckt_init_and_attention_layout():
    torch.manual_seed(0)
    ckt = CKTMHA(32, 48, 16, num_heads=4)
    linears = [m for m in ckt.modules() if isinstance(m, torch.nn.Linear)]
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in linears)  # out_proj of MHA included
    assert ckt.attn.out_proj in linears
    # Q comes from the class branch, K is H itself: changing only K's source changes T
    H = torch.randn(2, 17, 32)
    C, T = ckt(H)
    q = ckt.q_proj(C)
    A, _ = ckt.attn(q, H, ckt.v_proj(H))
    torch.testing.assert_close(T, ckt.out_proj(A))
    with pytest.raises(ValueError, match="token features"):
        ckt(torch.randn(2, 17, 31))
    mlp = CKTMHA(32, 48, 16, use_attention=False)
    assert mlp(H)[1].shape == (2, 17, 16) and not hasattr(mlp, "attn")


def test_encoder_is_frozen_and_has_no_grad(system1):
    x, y = _batch()
    enc_params = list(system1.encoder.parameters())
    assert enc_params and not any(p.requires_grad for p in enc_params)
    system1.train()
    assert not system1.encoder.vit.training
    loss = cl_vmf_loss(system1.set2set_logits(x, y), y)
    loss.backward()
    assert all(p.grad is None for p in enc_params)


def test_memory_step_moves_only_batch_rows_then_projection_step_moves_no_memory(make_system1):
    s1 = make_system1(num_classes=6, num_tasks=3)
    s1.memory.set_current_task(1)
    em = _em(s1)
    x, y = _batch(8, labels=(2, 3))  # task 1 owns classes 2, 3
    before = {k: v.clone() for k, v in s1.memory.state_dict().items()}
    enc_before = [p.clone() for p in s1.encoder.parameters()]
    proj_before = [p.clone() for p in s1.projection_parameters()]
    em.memory_step(_closure(s1, x, y))
    wc, wt = s1.memory.work_class.detach(), s1.memory.work_task.detach()
    changed_c = (wc != before["work_class"]).any(1)
    changed_t = (wt != before["work_task"]).any(1)
    assert changed_c.tolist() == [False, False, True, True, False, False]
    assert changed_t.tolist() == [False, True, False]
    for k in ("class_memory", "task_memory"):
        assert torch.equal(s1.memory.state_dict()[k], before[k])
    assert all(torch.equal(a, b) for a, b in zip(enc_before, s1.encoder.parameters()))
    assert all(p.grad is None for p in s1.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(proj_before, s1.projection_parameters()))  # memory step only
    mem_mid = {k: v.clone() for k, v in s1.memory.state_dict().items()}
    em.projection_step(_closure(s1, x, y))
    for k, v in s1.memory.state_dict().items():
        assert torch.equal(v, mem_mid[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(proj_before, s1.projection_parameters()))


def test_em_schedule_freezes_working_memory_after_em_steps(make_system1):
    s1 = make_system1()
    em = _em(s1, em_steps=3)
    x, y = _batch()
    for i in range(3):
        out = em.step(_closure(s1, x, y), i)
        assert set(out) == {"memory", "projection"}
    before = [p.clone() for p in s1.memory.working_parameters()]
    for i in (3, 4, 10):
        assert set(em.step(_closure(s1, x, y), i)) == {"projection"}
    assert all(torch.equal(a, b) for a, b in zip(before, s1.memory.working_parameters()))
    never = EMSchedule(em.memory_opt, em.projection_opt, None)
    assert never.uses_memory_step(10**6)
    with pytest.raises(ValueError):
        EMSchedule(em.memory_opt, em.projection_opt, -1)


def test_em_step_raises_on_non_finite_loss(make_system1):
    s1 = make_system1()
    em = _em(s1)
    with pytest.raises(FloatingPointError, match="memory step"):
        em.step(lambda phase: torch.tensor(float("nan"), requires_grad=True), 0)


def test_phase_equivalence_of_gradients(make_system1):
    """The memory phase's no-grad features and the projection phase's detached keys give the same
    gradients as a full backward for the parameters each optimizer steps."""
    s1 = make_system1()
    x, y = _batch()
    cl_vmf_loss(s1.set2set_logits(x, y, "both"), y).backward()
    full_mem = [p.grad.clone() for p in s1.memory.working_parameters()]
    full_proj = [p.grad.clone() for p in s1.projection_parameters()]
    s1.zero_grad(set_to_none=True)
    cl_vmf_loss(s1.set2set_logits(x, y, "memory"), y).backward()
    assert all(p.grad is None for p in s1.projection_parameters())
    for a, p in zip(full_mem, s1.memory.working_parameters()):
        torch.testing.assert_close(a, p.grad)
    s1.zero_grad(set_to_none=True)
    cl_vmf_loss(s1.set2set_logits(x, y, "projection"), y).backward()
    assert all(p.grad is None for p in s1.memory.working_parameters())
    for a, p in zip(full_proj, s1.projection_parameters()):
        torch.testing.assert_close(a, p.grad)


def test_consolidate_copies_exactly_task_rows_and_old_rows_stay_frozen(make_system1):
    s1 = make_system1(num_classes=6, num_tasks=3)
    mem = s1.memory
    init_c = mem.class_memory.clone()
    with torch.no_grad():
        mem.work_class.add_(1.0)
        mem.work_task.add_(1.0)
    mem.consolidate(1)
    assert torch.equal(mem.class_memory[2:4], mem.work_class[2:4].detach())
    assert torch.equal(mem.class_memory[:2], init_c[:2]) and torch.equal(mem.class_memory[4:], init_c[4:])
    assert torch.equal(mem.task_memory[1], mem.work_task[1].detach())
    # training task 2 leaves rows < 2*C of M_c bit-identical
    frozen = mem.class_memory[:4].clone()
    mem.set_current_task(2)
    em = _em(s1)
    x, y = _batch(8, labels=(0, 3, 4, 5))
    for i in range(3):
        em.step(_closure(s1, x, y), i)
    assert torch.equal(mem.class_memory[:4], frozen)
    assert mem.class_memory.grad is None and not mem.class_memory.requires_grad


def test_key_selection_by_task():
    mem = VMFValueMemory(6, 3, 2, 4, 3)
    mem.set_current_task(1)
    labels = torch.tensor([0, 1, 2, 3, 4])
    use_c, use_t = mem.uses_working(labels)
    assert use_c.tolist() == [False, False, True, True, True]
    assert use_t.tolist() == [False, False, True, True, True]
    keys = mem.keys_for(labels)
    exp0 = F.normalize(torch.cat([mem.task_memory[0], mem.class_memory[0]]), dim=0)
    exp2 = F.normalize(torch.cat([mem.work_task[1], mem.work_class[2]]), dim=0).detach()
    torch.testing.assert_close(keys[0], exp0)
    torch.testing.assert_close(keys[2].detach(), exp2)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(5))
    # test keys use only the consolidated tables
    mem.consolidate(0)
    k, ids = mem.keys_seen()
    assert ids.tolist() == [0, 1]
    torch.testing.assert_close(k[1], F.normalize(torch.cat([mem.task_memory[0], mem.class_memory[1]]), dim=0))
    k2, ids2 = mem.keys_seen(include_current=True)
    assert ids2.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(
        k2[3].detach(), F.normalize(torch.cat([mem.work_task[1], mem.work_class[3]]), dim=0).detach()
    )


def test_memory_bad_input():
    with pytest.raises(ValueError, match="num_tasks"):
        VMFValueMemory(7, 3, 2, 4, 3)
    mem = VMFValueMemory(6, 3, 2, 4, 3)
    with pytest.raises(ValueError, match="labels"):
        mem.keys_for(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        mem.keys_for(torch.tensor([6]))
    with pytest.raises(ValueError):
        mem.set_current_task(3)


def test_system1_bad_input(system1):
    with pytest.raises(RuntimeError, match="consolidated"):
        system1.scores(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="images"):
        system1.features(torch.rand(2, 16, 16))
    with pytest.raises(TypeError, match="float"):
        system1.features(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        system1.features(torch.full((2, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="labels"):
        system1.set2set_logits(torch.rand(3, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        system1.set2set_logits(torch.rand(2, 3, 16, 16), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="phase"):
        system1.set2set_logits(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]), phase="e")


def test_encoder_resizes_and_normalises(make_system1):
    s1 = make_system1()
    x = torch.rand(2, 3, 32, 32)
    H = s1.features(x)
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    ref = s1.encoder.vit(pixel_values=(small - 0.5) / 0.5).last_hidden_state
    torch.testing.assert_close(H, ref)


def test_fused_inference_equals_reference_and_tracks_parameter_updates():
    torch.manual_seed(0)
    ckt = CKTMHA(32, 48, 16, num_heads=4).eval()
    H = torch.randn(3, 17, 32)
    ref = query_embedding(*ckt(H))
    with torch.no_grad():
        fused = ckt.embed(H)
        torch.testing.assert_close(fused, ref.detach(), atol=1e-5, rtol=1e-5)
        assert ckt._fused is not None
        ckt.q_proj.weight.add_(0.1)  # in-place update (as an optimizer step) invalidates the cache
        torch.testing.assert_close(ckt.embed(H), query_embedding(*ckt(H)), atol=1e-5, rtol=1e-5)
    ckt.train()
    with torch.no_grad():
        ckt.embed(H)
    key = ckt._fused_key
    with torch.no_grad():
        ckt.embed(H)  # training mode never uses (or rebuilds) the fused path
    assert ckt._fused_key == key
    off = CKTMHA(32, 48, 16, num_heads=4, fused_inference=False).eval()
    with torch.no_grad():
        off.embed(H)
    assert off._fused is None


def test_build_vit_reports_a_missing_checkpoint_offline(monkeypatch):
    from icl_vmf.encoders import build_vit
    from papers_shared.data import DatasetNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="not in the local HF cache"):
        build_vit("google/vit-not-cached-xyz", local_files_only=True)
    with pytest.raises(ValueError, match="model_id or a config"):
        build_vit(None)
