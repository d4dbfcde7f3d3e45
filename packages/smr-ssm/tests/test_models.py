"""transformers integration (save/load, Trainer) and the model heads."""

import pytest
import torch

from smr_ssm import (
    SSMConfig,
    SSMForCausalLM,
    SSMForSequenceClassification,
    SSMForSequenceRegression,
    smr_scale_stats,
)


def tiny(**kw):
    base = dict(vocab_size=50, d_model=32, n_layer=2, d_state=8)
    base.update(kw)
    return SSMConfig(**base)


@pytest.mark.slow
def test_causal_lm_loss_save_load_and_trainer(tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = SSMForCausalLM(SSMConfig(vocab_size=50, d_model=32, n_layer=2))
    ids = torch.randint(0, 50, (2, 16))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 16, 50) and torch.isfinite(out.loss)
    assert model.lm_head.weight is model.model.embeddings.weight
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, SSMForCausalLM) and loaded.config.smr == "default"
    assert torch.allclose(loaded(input_ids=ids).logits, out.logits, atol=1e-6)
    data = [{"input_ids": ids[0], "labels": ids[0]}, {"input_ids": ids[1], "labels": ids[1]}] * 4
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
        disable_tqdm=True,
    )
    before = loaded.model.layers[0].mixer.smr.weight.detach().clone()
    result = Trainer(model=loaded, args=args, train_dataset=data).train()
    assert result.global_step == 2
    assert not torch.equal(before, loaded.model.layers[0].mixer.smr.weight)


@pytest.mark.parametrize("layer_type", ["s4d", "s5", "mamba", "mega", "spade", "s4"])
def test_recurrent_generation_matches_convolution(layer_type):
    model = (
        SSMForCausalLM(tiny(layer_type=layer_type, smr={"init": "random"}, spade_window=4, mega_chunk=4))
        .double()
        .eval()
    )
    prompt = torch.randint(0, 50, (2, 5))
    gen = model.generate_recurrent(prompt, max_new_tokens=5)
    logits = model(input_ids=gen).logits
    assert torch.equal(logits[:, 4:-1].argmax(-1), gen[:, 5:])
    hf = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(hf, gen)


def test_baseline_config_has_no_smr_and_smr_adds_h_times_m_plus_1_params():
    with_smr = SSMForCausalLM(tiny(smr="default"))
    baseline = SSMForCausalLM(tiny(smr=None))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert not any("smr" in k for k in baseline.state_dict())
    assert n(with_smr) - n(baseline) == 2 * 32 * (4 + 1)  # n_layer * H * (m + 1)


def test_classification_heads_and_pooling():
    cfg = tiny(num_labels=3, bidirectional=True)
    model = SSMForSequenceClassification(cfg)
    ids = torch.randint(1, 50, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, 8:] = 0
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3) and torch.isfinite(out.loss)
    dual = SSMForSequenceClassification(tiny(num_labels=2, dual=True, bidirectional=True))
    pairs = torch.randint(1, 50, (3, 2, 10))
    assert dual(
        input_ids=pairs, attention_mask=torch.ones(3, 2, 10), labels=torch.tensor([0, 1, 1])
    ).logits.shape == (3, 2)
    with pytest.raises(ValueError, match="pairs"):
        dual(input_ids=ids)
    pix = SSMForSequenceClassification(tiny(num_labels=10, encoder="linear", input_dim=1, layer_type="s5"))
    assert pix(input_values=torch.randn(2, 16, 1)).logits.shape == (2, 10)


def test_regression_head_and_scale_stats():
    model = SSMForSequenceRegression(
        tiny(encoder="linear", input_dim=1, output_dim=1, smr={"init": "random"})
    )
    x = torch.randn(2, 20, 1)
    out = model(input_values=x, labels=torch.randn(2, 20, 1), timesteps=torch.rand(2, 20) + 0.5)
    assert torch.isfinite(out.loss)
    stats = smr_scale_stats(model, input_values=x)
    assert len(stats) == 2 * 3 and all(k.startswith("smr/") for k in stats)


def test_bad_model_inputs():
    model = SSMForCausalLM(tiny())
    with pytest.raises(ValueError, match="out of range"):
        model(input_ids=torch.full((1, 4), 50))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="integer"):
        model(input_ids=torch.rand(1, 4))
    emb = torch.randn(1, 4, 32)
    emb[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        model(inputs_embeds=emb)
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="layer_type"):
        SSMConfig(layer_type="transformer")
    with pytest.raises(ValueError, match="valid options"):
        SSMConfig(smr={"memory": 2})
