"""Tiny Hugging Face models built from configs (no download) through the whole pipeline (ours)."""

import copy

import pytest
import torch

from t_switch import (
    AutoSwitch,
    KNNRouter,
    SwitchedModel,
    TaskSwitchBank,
    collect_query_features,
    load_switches,
    save_switches,
    task_vector,
)
from t_switch.config import SwitchConfig
from t_switch.experiment import build_switches


def _perturb(model, seed):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.slow
def test_roberta_pipeline(tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        num_labels=2,
    )
    pre = RobertaForSequenceClassification(cfg).eval()
    fts = {t: _perturb(pre, i) for i, t in enumerate(("cola", "sst2"))}
    tvs = {t: task_vector(pre, m) for t, m in fts.items()}
    assert not any("classifier" in n for tv in tvs.values() for n in tv)
    sws = build_switches(tvs, SwitchConfig(drop_ratio=0.7))
    f = load_switches(save_switches(tmp_path / "r.safetensors", sws))
    bank = TaskSwitchBank(pre, f.switches)
    model = SwitchedModel(pre, bank)

    def feat(input_ids, attention_mask=None):
        return pre.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    ids = {
        t: torch.randint(3, 100, (6, 9), generator=torch.Generator().manual_seed(i))
        for i, t in enumerate(fts)
    }
    assert feat(ids["cola"]).shape == (6, 32)
    q = {t: [{"input_ids": x, "attention_mask": torch.ones_like(x)}] for t, x in ids.items()}
    qf, ql = collect_query_features(feat, q, n_per_task=6)
    router = KNNRouter(k=3).fit(qf, ql)
    auto = AutoSwitch(model, router, feat, mode="hard")
    heads = {n: p.detach() for n, p in fts["sst2"].named_parameters() if "classifier" in n}
    out = auto(input_ids=ids["sst2"], attention_mask=torch.ones_like(ids["sst2"]), overrides=heads)
    assert out.logits.shape == (6, 2)
    assert auto.last_weights.sum() == 1 and set(auto.last_weights.tolist()) <= {0.0, 1.0}
    ref = copy.deepcopy(pre)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in sws["sst2"].signs:
                p.add_(sws["sst2"].tensor(n))
            if n in heads:
                p.copy_(heads[n])
    if int(auto.last_weights.argmax()) == 1:
        assert torch.allclose(
            out.logits,
            ref(input_ids=ids["sst2"], attention_mask=torch.ones_like(ids["sst2"])).logits,
            atol=1e-5,
        )


@pytest.mark.slow
def test_clip_vision_pipeline():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    pre = CLIPVisionModelWithProjection(cfg).eval()
    fts = {t: _perturb(pre, i) for i, t in enumerate(("a", "b", "c"))}
    tvs = {t: task_vector(pre, m) for t, m in fts.items()}
    assert any(v.dim() >= 2 for v in tvs["a"].values())
    bank = TaskSwitchBank(pre, build_switches(tvs, SwitchConfig()))
    model = SwitchedModel(pre, bank)
    x = torch.randn(4, 3, 32, 32)
    feat = lambda pixel_values: pre(pixel_values=pixel_values).image_embeds  # noqa: E731
    assert feat(x).shape == (4, 16)
    router = KNNRouter(k=2).fit(torch.randn(6, 16), [0, 0, 1, 1, 2, 2])
    out = AutoSwitch(model, router, feat)(pixel_values=x)
    assert out.image_embeds.shape == (4, 16) and torch.isfinite(out.image_embeds).all()
    z = model(pixel_values=x, weights=torch.zeros(3)).image_embeds
    assert torch.equal(z, pre(pixel_values=x).image_embeds)
