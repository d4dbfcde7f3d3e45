"""OFSDPOTrainer on a tiny GPT-2 (equivalence with trl, roles, checkpoints, GC and error paths)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from trl import DPOConfig, DPOTrainer

from ofs_dpo.adapters import adapter_parameters
from ofs_dpo.config import OFSDPOConfig
from ofs_dpo.data import tiny_gpt2
from ofs_dpo.trainer import OFS_STATE_NAME, OFSDPOTrainer


def _grads(model, adapter):
    return {n: p.grad.detach().clone() for n, p in adapter_parameters(model, adapter).items()}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_fast_dpo_loss_equals_trl(h, make_trainer, tmp_path, tok, domains, loss_type):
    """with α=0 the fast module's DPO loss is trl's DPO loss with the same adapter weights."""
    ofs = make_trainer(chase_alpha=0.0, loss_type=[loss_type])
    dpo_args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        report_to=[],
        per_device_train_batch_size=4,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        train_sampling_strategy="sequential",
        loss_type=[loss_type],
    )
    dpo = DPOTrainer(
        tiny_gpt2(len(tok), seed=0),
        args=dpo_args,
        train_dataset=domains["toy_a"]["train"],
        processing_class=tok,
        peft_config=h.lora_config(),
    )
    h.randomize_adapter(ofs.model, "default", seed=3)
    h.randomize_adapter(dpo.model, "default", seed=3)
    for (n1, p1), (_n2, p2) in zip(
        adapter_parameters(ofs.model, "default").items(), adapter_parameters(dpo.model, "default").items()
    ):
        assert torch.equal(p1, p2), n1
    batch = h.first_batch(ofs)
    ofs.model.train()
    dpo.model.train()
    with torch.no_grad():
        obj, _ = ofs.compute_objectives(ofs.model, batch)
        ref_loss = dpo.compute_loss(dpo.model, batch)
    assert obj.dpo_fast.item() == pytest.approx(ref_loss.item(), abs=1e-6)
    assert ref_loss.item() != pytest.approx(0.6931, abs=1e-3)  # the adapter is not at the reference


def test_gradient_routing_on_the_model(h, make_trainer):
    """both adapters get finite grads, the base none; fast grads = grads of J_L alone."""
    tr = make_trainer(chase_alpha=0.8)
    h.randomize_adapter(tr.model, "default", seed=1)
    h.randomize_adapter(tr.model, "slow", seed=2)
    batch = h.first_batch(tr)
    tr.model.train()
    obj, _ = tr.compute_objectives(tr.model, batch)
    obj.total.backward()
    total_fast, total_slow = _grads(tr.model, "default"), _grads(tr.model, "slow")
    for g in (*total_fast.values(), *total_slow.values()):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    for n, p in tr.model.named_parameters():
        if "lora_" not in n:
            assert p.grad is None, n
    for which, expected in (("leader_objective", total_fast), ("chaser_objective", total_slow)):
        tr.model.zero_grad(set_to_none=True)
        obj, _ = tr.compute_objectives(tr.model, batch)
        getattr(obj, which).backward()
        got = _grads(tr.model, "default" if which == "leader_objective" else "slow")
        other = "slow" if which == "leader_objective" else "default"
        assert all(
            p.grad is None or p.grad.abs().sum() == 0 for p in adapter_parameters(tr.model, other).values()
        )
        for n in got:
            assert torch.allclose(got[n], expected[n], atol=1e-7), n


def test_one_sgd_step_signs(h, make_trainer):
    """a step on J_C raises h_slow; a step on J_L raises h_fast − h_slow."""
    tr = make_trainer()
    h.randomize_adapter(tr.model, "default", seed=5, scale=0.05)
    h.randomize_adapter(tr.model, "slow", seed=6, scale=0.05)
    batch = h.first_batch(tr)
    tr.model.train()

    def step(which, adapter, lr=0.05):
        tr.model.zero_grad(set_to_none=True)
        obj, fw = tr.compute_objectives(tr.model, batch)
        before = fw["margins"]
        getattr(obj, which).backward()
        with torch.no_grad():
            for p in adapter_parameters(tr.model, adapter).values():
                p -= lr * p.grad
            _, fw2 = tr.compute_objectives(tr.model, batch)
        return before, fw2["margins"]

    before, after = step("chaser_objective", "slow")
    assert after["slow"].mean() > before["slow"].mean()
    assert torch.equal(after["fast"], before["fast"])
    before, after = step("leader_objective", "default")
    assert (after["fast"] - after["slow"]).mean() > (before["fast"] - before["slow"]).mean()


def test_optimizer_groups_keep_the_lr_ratio(make_trainer):
    """(ours)"""
    tr = make_trainer(learning_rate=1e-3, slow_lr_ratio=0.25, warmup_steps=2)
    tr.create_optimizer_and_scheduler(num_training_steps=20)
    groups = tr.optimizer.param_groups
    slow_ids = {id(p) for p in adapter_parameters(tr.model, "slow").values()}
    fast_ids = {id(p) for p in adapter_parameters(tr.model, "default").values()}
    assert {id(p) for g in groups if g["ofs_module"] == "slow" for p in g["params"]} == slow_ids
    assert {id(p) for g in groups if g["ofs_module"] == "fast" for p in g["params"]} == fast_ids
    for _ in range(5):
        tr.optimizer.step()
        tr.lr_scheduler.step()
        lrs = {g["ofs_module"]: g["lr"] for g in groups}
        assert lrs["fast"] > 0
        assert lrs["slow"] / lrs["fast"] == pytest.approx(0.25)


def test_set_adapter_pitfall_is_handled(h, make_trainer):
    """after compute_loss (train and eval) both adapters are trainable, 'default' is active."""
    tr = make_trainer()
    batch = h.first_batch(tr)
    tr.model.train()
    tr.compute_loss(tr.model, batch).backward()
    for mode in ("train", "eval"):
        getattr(tr.model, mode)()
        with torch.no_grad():
            tr.compute_loss(tr.model, batch)
        assert tr.model.active_adapter == "default"
        for name in ("default", "slow"):
            assert all(p.requires_grad for p in adapter_parameters(tr.model, name).values())


def _fill_window(tr, fast, slow, steps):
    for s in range(1, steps + 1):
        tr.chasing.pending_fast.append(fast)
        tr.chasing.pending_slow.append(slow)
        tr._on_optimizer_step(s)


def test_role_swap_roles_mode(make_trainer):
    """(roles) a lower slow loss over K steps makes the slow module the leader."""
    tr = make_trainer(chase_interval=3)
    _fill_window(tr, fast=0.6, slow=0.5, steps=2)
    assert tr.leader == "fast"  # no check before K steps
    _fill_window(tr, fast=0.6, slow=0.5, steps=3)
    assert tr.leader == "slow" and tr.leader_adapter == "slow"
    _fill_window(tr, fast=0.5, slow=0.5, steps=3)  # tie keeps the assignment
    assert tr.leader == "slow"
    _fill_window(tr, fast=0.4, slow=0.5, steps=3)
    assert tr.leader == "fast" and tr.chasing.num_swaps == 2


def test_role_swap_weights_mode_exchanges_tensors_and_adam_state(h, make_trainer):
    """(weights) adapter tensors and Adam moments are exchanged bitwise; leader stays fast."""
    tr = make_trainer(chase_interval=2, swap_mode="weights")
    h.randomize_adapter(tr.model, "slow", seed=9)
    tr.create_optimizer_and_scheduler(num_training_steps=10)
    batch = h.first_batch(tr)
    tr.model.train()
    tr.compute_loss(tr.model, batch).backward()
    tr.optimizer.step()
    fast, slow = adapter_parameters(tr.model, "default"), adapter_parameters(tr.model, "slow")
    snap = {
        n: (p.detach().clone(), {k: v.clone() for k, v in tr.optimizer.state[p].items()})
        for n, p in {**fast, **slow}.items()
    }
    _fill_window(tr, fast=0.7, slow=0.6, steps=2)
    assert tr.leader == "fast" and tr.chasing.num_swaps == 1
    for n, p in fast.items():
        other = n.replace(".default.", ".slow.")
        assert torch.equal(p, snap[other][0])
        assert torch.equal(slow[other], snap[n][0])
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(tr.optimizer.state[p][key], snap[other][1][key])
            assert torch.equal(tr.optimizer.state[slow[other]][key], snap[n][1][key])


def test_identical_init_gives_identical_modules_equal_to_reference(make_trainer):
    """(ours)"""
    tr = make_trainer()
    pm = tr.model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        pm.set_adapter("default")
        fast = pm(input_ids=ids).logits
        pm.set_adapter("slow")
        slow = pm(input_ids=ids).logits
        with pm.disable_adapter():
            ref = pm(input_ids=ids).logits
    pm.set_adapter("default")
    assert torch.equal(fast, slow) and torch.equal(fast, ref)
    for n, p in adapter_parameters(pm, "default").items():
        assert torch.equal(p, adapter_parameters(pm, "slow")[n.replace(".default.", ".slow.")])
    other = make_trainer(identical_init=False)
    a_fast = [p for n, p in adapter_parameters(other.model, "default").items() if "lora_A" in n]
    a_slow = [p for n, p in adapter_parameters(other.model, "slow").items() if "lora_A" in n]
    assert not all(torch.equal(a, b) for a, b in zip(a_fast, a_slow))


def test_gradient_checkpointing_recomputes_with_the_right_adapter(h, make_trainer, monkeypatch):
    """With activation checkpointing the grads equal the no-checkpointing grads; without our fix they do not."""
    import ofs_dpo.trainer as trainer_mod

    tr = make_trainer(chase_alpha=0.5)
    h.randomize_adapter(tr.model, "default", seed=1)
    h.randomize_adapter(tr.model, "slow", seed=2)
    batch = h.first_batch(tr)
    tr.model.train()

    def grads():
        tr.model.zero_grad(set_to_none=True)
        tr.compute_loss(tr.model, batch).backward()
        return {**_grads(tr.model, "default"), **_grads(tr.model, "slow")}

    plain = grads()
    tr.model.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
    checkpointed = grads()
    for n in plain:
        assert torch.allclose(plain[n], checkpointed[n], atol=1e-6), n
    tr.model.base_model.model.gradient_checkpointing_enable(
        {"use_reentrant": False}
    )  # fresh, unwrapped funcs
    monkeypatch.setattr(trainer_mod, "make_checkpointing_adapter_aware", lambda *a, **k: 0)
    broken = grads()
    assert not all(torch.allclose(plain[n], broken[n], atol=1e-6) for n in plain)


def test_train_logs_ofs_metrics_and_evaluates_both(make_trainer, domains):
    tr = make_trainer(eval_dataset=domains["toy_a"]["test"], eval_module="both", max_steps=3)
    tr.train()
    logged = {k for rec in tr.state.log_history for k in rec}
    for key in (
        "ofs/dpo_loss_fast",
        "ofs/dpo_loss_slow",
        "ofs/chase_loss",
        "ofs/margin_gap",
        "ofs/leader_is_fast",
        "ofs/grad_weight_dpo",
        "ofs/grad_weight_chase",
        "rewards/accuracies",
        "logps/chosen",
    ):
        assert key in logged, key
    first = tr.state.log_history[0]
    assert first["ofs/grad_weight_chase"] == pytest.approx(0.5, abs=1e-6)  # identical init: parity
    assert first["ofs/chase_loss"] == pytest.approx(0.6931, abs=1e-4)
    metrics = tr.evaluate()
    for key in (
        "eval_fast/rewards/accuracies",
        "eval_slow/rewards/accuracies",
        "eval_ofs/margin_gap",
        "eval_loss",
    ):
        assert key in metrics, key


def test_precomputed_reference_gives_the_same_loss(h, make_trainer):
    a = make_trainer()
    b = make_trainer(precompute_ref_log_probs=True)
    for t in (a, b):
        h.randomize_adapter(t.model, "default", seed=4)
        t.model.train()
    batch_a, batch_b = h.first_batch(a), h.first_batch(b)
    assert "ref_chosen_logps" in batch_b
    with torch.no_grad():
        la, lb = a.compute_loss(a.model, batch_a), b.compute_loss(b.model, batch_b)
    assert la.item() == pytest.approx(lb.item(), abs=1e-5)


def test_nonfinite_step_is_skipped(h, make_trainer):
    tr = make_trainer()
    with torch.no_grad():
        next(p for n, p in adapter_parameters(tr.model, "slow").items() if "lora_B" in n).fill_(float("inf"))
    batch = h.first_batch(tr)
    tr.model.train()
    loss = tr.compute_loss(tr.model, batch)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    for name in ("default", "slow"):
        for p in adapter_parameters(tr.model, name).values():
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert tr._metrics["train"]["ofs/skipped_steps"] == [1.0]


def test_nonfinite_losses_stay_out_of_the_role_window(h, make_trainer):
    """A skipped non-finite step must not enter the role-swap window (a NaN mean would freeze the roles)."""
    tr = make_trainer(chase_interval=1)
    with torch.no_grad():
        next(p for n, p in adapter_parameters(tr.model, "slow").items() if "lora_B" in n).fill_(float("inf"))
    tr.model.train()
    tr.compute_loss(tr.model, h.first_batch(tr))  # the slow module's loss is non-finite: skipped
    assert tr._skipped_steps == 1 and tr.chasing.pending_fast == [] and tr.chasing.pending_slow == []
    # pending values that are not finite (e.g. restored from an older state) are dropped at the check too
    tr.chasing.pending_fast[:] = [float("nan"), 0.9]
    tr.chasing.pending_slow[:] = [0.2, 0.5]
    tr._on_optimizer_step(1)
    assert tr.chasing.history[-1]["fast"] == 0.9 and tr.chasing.history[-1]["slow"] == 0.5
    assert tr.leader == "slow" and tr.chasing.num_swaps == 1  # the finite window decides
    tr.chasing.pending_fast[:] = [float("inf")]
    tr.chasing.pending_slow[:] = [0.1]
    tr._on_optimizer_step(2)  # nothing finite: no check, roles kept
    assert len(tr.chasing.history) == 1 and tr.leader == "slow"


def test_save_load_round_trip_and_export(h, make_trainer, tmp_path, tok):
    """a checkpoint keeps both adapters and ofs_state.json; the leader exports alone."""
    tr = make_trainer(chase_interval=1, max_steps=2)
    tr.train()
    h.randomize_adapter(tr.model, "slow", seed=11)
    tr.chasing.leader = "slow"
    out = tmp_path / "saved"
    tr.save_model(str(out))
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "slow" / "adapter_model.safetensors").is_file()
    state = json.loads((out / OFS_STATE_NAME).read_text())
    assert state["leader"] == "slow" and state["slow_adapter"] == "slow"

    fresh = make_trainer(model_seed=0)
    fresh._load_from_checkpoint(str(out))
    for name in ("default", "slow"):
        saved = adapter_parameters(tr.model, name)
        for n, p in adapter_parameters(fresh.model, name).items():
            assert torch.equal(p, saved[n]), n
            assert p.requires_grad
    assert fresh.leader == "slow" and fresh.chasing.history == tr.chasing.history

    exported = tr.export_leader(tmp_path / "leader")
    loaded = PeftModel.from_pretrained(tiny_gpt2(len(tok), seed=0), str(exported))
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        tr.model.set_adapter("slow")
        want = tr.model(input_ids=ids).logits
        tr.model.set_adapter("default")
        got = loaded(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="slow"):
        (out / "slow" / "adapter_model.safetensors").unlink()
        fresh._load_from_checkpoint(str(out))


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(make_trainer, tmp_path):
    """Stop at step 2, resume to step 4: both adapters and roles equal an uninterrupted run."""
    full = make_trainer(max_steps=4, chase_interval=1, output_dir=str(tmp_path / "full"))
    full.train()
    part = make_trainer(max_steps=4, chase_interval=1, output_dir=str(tmp_path / "part"), save_steps=2)
    part.args.save_strategy = "steps"
    part.train()
    resumed = make_trainer(max_steps=4, chase_interval=1, output_dir=str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    for name in ("default", "slow"):
        want = adapter_parameters(full.model, name)
        for n, p in adapter_parameters(resumed.model, name).items():
            assert torch.allclose(p, want[n], atol=1e-6), n
    assert resumed.chasing.history == full.chasing.history


def test_constructor_errors(h, tmp_path, tok, domains):
    model = tiny_gpt2(len(tok))
    args = h.small_args(tmp_path)
    ds = domains["toy_a"]["train"]
    with pytest.raises(ValueError, match="peft_config"):
        OFSDPOTrainer(model, args=args, train_dataset=ds, processing_class=tok)
    with pytest.raises(TypeError, match="OFSDPOConfig"):
        OFSDPOTrainer(
            model,
            args=DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
            train_dataset=ds,
            processing_class=tok,
            peft_config=h.lora_config(),
        )
    with pytest.raises(ValueError, match="ref_model"):
        OFSDPOTrainer(
            model,
            ref_model=tiny_gpt2(len(tok)),
            args=args,
            train_dataset=ds,
            processing_class=tok,
            peft_config=h.lora_config(),
        )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("slow_lr_ratio", 0.0, "slow_lr_ratio"),
        ("chase_alpha", -1.0, "chase_alpha"),
        ("chase_interval", 0, "chase_interval"),
        ("chase_mode", "push", "chase_mode"),
        ("swap_mode", "always", "swap_mode"),
        ("eval_module", "best", "eval_module"),
        ("slow_adapter_name", "ref", "slow_adapter_name"),
        ("fast_adapter_name", "fast", "fast_adapter_name"),
        ("loss_type", ["kto_pair"], "not supported"),
        ("chase_margin_clamp", -2.0, "chase_margin_clamp"),
    ],
)
def test_config_validation(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        OFSDPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **{field: value})


def test_config_defaults_are_the_documented_ones(tmp_path):
    cfg = OFSDPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    assert (cfg.learning_rate, cfg.slow_lr_ratio, cfg.chase_alpha, cfg.chase_interval) == (5e-5, 0.1, 1.0, 10)
    assert (cfg.chase_mode, cfg.swap_mode, cfg.identical_init, cfg.eval_module) == (
        "minmax",
        "roles",
        True,
        "leader",
    )
    assert (cfg.beta, cfg.num_train_epochs, cfg.train_sampling_strategy, cfg.max_grad_norm) == (
        0.1,
        1.0,
        "sequential",
        1.0,
    )
    assert cfg.chase_margin_clamp is None and cfg.skip_nonfinite_steps
