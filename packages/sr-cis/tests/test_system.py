import pytest
import torch
from torch.utils.data import ConcatDataset

from papers_shared.errors import CheckpointError
from papers_shared.mllm import ScriptedModel
from papers_shared.testing import CodeRunningPickle
from sr_cis.scenario import GaussianPixelGenerator
from sr_cis.system import SRCIS
from sr_cis.text_memory import CLASS_NAME_TEMPLATE


def _oracle_by_prompt():
    # answers the first candidate named in the prompt: deterministic, exercises parsing
    def ans(im, p):
        fill = p.split(": ", 1)[1].split("?")[0]
        return "it is " + fill.replace(" or ", ", ").split(", ")[0]

    return ScriptedModel(ans)


def _trained(small, tiny_cfg, make_task, names, gen=None):
    tiny_cfg.caoad.warmup = 4
    s = SRCIS(small, _oracle_by_prompt(), gen or GaussianPixelGenerator(4), tiny_cfg, names)
    for t, cs in enumerate([[0, 1], [2, 3]]):
        s.train_task(make_task(cs, 80), t)
        s.after_task(t, 2)  # period 2 -> restructure after the second task
    return s


def test_end_to_end_tiny_run_and_safetensors_round_trip(small, tiny_cfg, make_task, names, tmp_path):
    from sr_cis.small_model import build_small_model

    s = _trained(small, tiny_cfg, make_task, names)
    assert s.memory.ltm is not None and not s.memory.stm
    test = ConcatDataset([make_task(cs) for cs in ([0, 1], [2, 3])])
    res = s.evaluate(test, {0: 0, 1: 0, 2: 1, 3: 1})
    for k in ("acc", "acc_fast", "route_frac", "fix_rate", "harm_rate", "per_task", "storage", "region_acc"):
        assert k in res
    assert set(res["per_task"]) == {0, 1} and 0.0 <= res["acc"] <= 1.0
    assert 0.0 < res["route_frac"] < 1.0  # CA-OAD routed some but not all samples
    assert res["region_acc"] == 1.0  # one region (the LTM) owns every class
    st = res["storage"]
    texts = [CLASS_NAME_TEMPLATE.format(name=names[c]) for c in range(4)]
    assert st["regions"] == 1 and st["lora_bytes"] > 0
    assert st["text_bytes"] == sum(len(t) + len(names[c]) for c, t in enumerate(texts))
    assert st["image_stats_bytes"] > 0  # an unfrozen Gaussian generator keeps task pixel statistics
    # round trip through safetensors: a fresh system restores identical predictions
    path = s.save(tmp_path / "memory.safetensors", include_backbone=True)
    torch.manual_seed(123)
    fresh = SRCIS(build_small_model(tiny_cfg.small), None, GaussianPixelGenerator(4), tiny_cfg, names)
    fresh.load(path)
    x = make_task([0, 1, 2, 3], 40).tensors[0]
    s.reset_stream()
    fresh.reset_stream()
    assert torch.equal(s.predict(x)[1]["fast_pred"], fresh.predict(x)[1]["fast_pred"])
    assert fresh.memory.ltm.classes == [0, 1, 2, 3]
    assert fresh.memory.text.for_class(2) == [texts[2]]
    assert fresh.generator.stats.keys() == s.generator.stats.keys()
    with pytest.raises(FileNotFoundError):
        fresh.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="fresh small model"):
        fresh.load(path)


def test_crafted_pickle_and_damaged_files_are_refused(small, tiny_cfg, names, tmp_path):
    torch.save({"format": "sr-cis/2", "x": CodeRunningPickle(tmp_path / "pwned")}, tmp_path / "evil.pt")
    s = SRCIS(small, None, None, tiny_cfg, names)
    with pytest.raises(CheckpointError, match=r"evil\.pt") as err:
        s.load(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "pwned").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        s.load(tmp_path / "bad.safetensors")
    torch.save({"format": "other"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an SR-CIS memory"):
        s.load(tmp_path / "foreign.pt")


def test_text_memory_holds_only_text_with_a_corpus_generator(small, tiny_cfg, make_task, names, digits):
    x, y = digits
    corpus = GaussianPixelGenerator(4).fit_corpus(x[y < 4][::2], y[y < 4][::2], names)
    with pytest.raises(RuntimeError, match="frozen"):
        corpus.fit("zero", x[:4])
    before = {k: v[0].clone() for k, v in corpus.stats.items()}
    s = _trained(small, tiny_cfg, make_task, names, gen=corpus)
    assert not s.stores_image_stats and s.storage_report()["image_stats_bytes"] == 0
    assert all(torch.equal(before[k], corpus.stats[k][0]) for k in before)  # never refitted on tasks
    prompts, _, labels = s.replay_prompts()
    assert set(prompts) == {CLASS_NAME_TEMPLATE.format(name=names[c]) for c in range(4)}
    assert labels.count(0) == tiny_cfg.text.n_desc
    assert "image_stats" not in s.state_dict()


def test_regions_keep_frozen_prototypes_through_restructuring(small, tiny_cfg, make_task, names):
    s = _trained(small, tiny_cfg, make_task, names)
    ltm = s.memory.ltm
    x, y = make_task([0, 1, 2, 3], 80).tensors
    ref = {}
    for cs in ([0, 1], [2, 3]):  # each task's own training images (80 per task, as in _trained)
        xt, yt = make_task(cs, 80).tensors
        with torch.no_grad():
            h = small.features(xt, None)
        ref |= {c: h[yt == c].mean(0) for c in cs}
    assert ltm.classes == [0, 1, 2, 3]
    assert torch.allclose(ltm.frozen_prototypes, torch.stack([ref[c] for c in ltm.classes]), atol=1e-4)
    assert torch.equal(s.state_dict()["ltm"]["frozen"], ltm.frozen_prototypes)  # saved with the memory


def test_stm_report_and_lora_switch(small, tiny_cfg, make_task, names):
    tiny_cfg.stm.epochs = 2
    tiny_cfg.stm.lr = 5e-3
    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 64), 0)
    rep = s.task_reports[-1]
    assert rep["lora_rel_delta"] > 0 and rep["prototype_shift"] > 0 and len(rep["losses"]) == 2
    tiny_cfg.stm.train_lora = False
    s.train_task(make_task([2, 3], 64), 1)
    assert s.task_reports[-1]["lora_rel_delta"] == 0.0 and s.task_reports[-1]["prototype_shift"] == 0.0


def test_train_task_rejects_repeated_or_unnamed_classes(small, tiny_cfg, make_task, names):
    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 40), 0)
    with pytest.raises(ValueError, match="already learned"):
        s.train_task(make_task([1, 2], 40), 1)
    s2 = SRCIS(small, None, None, tiny_cfg, {0: "zero"})
    with pytest.raises(KeyError, match="class name"):
        s2.train_task(make_task([5, 6], 40), 0)


def test_frozen_adapters_unchanged_by_later_tasks(small, tiny_cfg, make_task, names):
    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 60), 0)
    st0 = small.adapter_state("stm_0")
    h0 = s.memory.stm[0].head.weight.clone()
    s.train_task(make_task([2, 3], 60), 1)
    st0b = small.adapter_state("stm_0")
    assert all(torch.equal(st0[k], st0b[k]) for k in st0)
    assert torch.equal(h0, s.memory.stm[0].head.weight)
    assert not any(p.requires_grad for p in small.parameters())


def test_override_restores_config(small, tiny_cfg, make_task, names):
    import dataclasses

    s = SRCIS(small, None, None, tiny_cfg, names)
    s.train_task(make_task([0, 1], 40), 0)
    s.train_task(make_task([2, 3], 40), 1)
    test = make_task([0, 1, 2, 3], 80)
    base = s.evaluate(test)
    with s.override(fast=dataclasses.replace(s.cfg.fast, routing="max_conf")) as o:
        assert o.cfg.fast.routing == "max_conf" and "region_acc" in o.evaluate(test)
    assert s.cfg.fast.routing == "frozen_prototype" and s.evaluate(test)["acc"] == base["acc"]
