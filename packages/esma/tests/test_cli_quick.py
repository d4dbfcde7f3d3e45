import csv
import json
import warnings

import pytest
import torch

from esma.cli import main
from esma.config import EsmaExperimentConfig, QuickConfig
from esma.quick import aggregate, build_claims, quick_config, quick_reproduction, storage_ratio
from papers_shared.cli import resolve_config
from papers_shared.config import ConfigError, load_config

PAPER = [("esma_resnet50", "resnet50"), ("esma_resnet152", "resnet152"), ("esma_vgg19bn", "vgg19_bn"),
         ("esma_densenet121", "densenet121")]  # fmt: skip


def _cfg(name, *overrides):
    return load_config(EsmaExperimentConfig, resolve_config("esma", name), list(overrides))


def _tiny(tmp_path):
    return ["--config", "digits_tiny", "--out", str(tmp_path), "--no-progress", "digits_size=8",
            "digits_source_epochs=1", "pretrain.steps=3", "train.max_steps=2", "ttp.max_steps=1",
            "eval.batch_size=512"]  # fmt: skip


def test_paper_configs_normalise_once_and_keep_the_official_quirks():
    """The four transfer-table configs run as the official code at HEAD (eff2015): one normalisation."""
    for name, src in PAPER:
        cfg = _cfg(name)
        assert cfg.name == name and cfg.source == src and cfg.dataset == "imagenet"
        assert cfg.train.legacy_double_normalize is False
        assert cfg.generator.legacy_padding_idx and cfg.pretrain.legacy_accumulate_grads
        assert not cfg.screening.legacy_screening_boundary
        assert cfg.class_ids == [24, 99, 245, 344, 471, 555, 661, 701, 802, 919]
        assert cfg.screening.q == 2 and cfg.pretrain.steps == 15000 and cfg.train.epochs == 300
        assert cfg.pretrain.lr == pytest.approx(1.5e-5) and cfg.train.lr == pytest.approx(1e-4)
        assert cfg.train.batch_size == 25 and cfg.eval.batch_size == 50
        assert cfg.train.eps_train == pytest.approx(10 / 255) and cfg.eval.eps == pytest.approx(16 / 255)
    for name in ("ttp_resnet50", "es_iterative_resnet50"):
        assert _cfg(name).train.legacy_double_normalize is False
    d = EsmaExperimentConfig()
    assert not (
        d.generator.legacy_padding_idx
        or d.pretrain.legacy_accumulate_grads
        or d.train.legacy_double_normalize
    )


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("eval.eps=-1", "eval.eps=-1.0: must be >"),
        ("train.eps_train=5", "must be <= 1"),
        ("train.lr=-1", "train.lr=-1.0"),
        ("pretrain.lr=nan", "finite"),
        ("train.batch_size=0", "batch_size=0"),
        ("screening.q=0", "screening.q=0"),
        ("screening.kind=medium", "not one of"),
        ("eval.precision=fp16", "not one of"),
        ("eval.bf16_mode=weight", "not one of"),
        ("eval.channels_last=maybe", "channels_last"),
        ("class_ids=[24,24]", "distinct"),
        ("class_ids=[24,1000]", r"\[0, 1000\)"),
        ("source=tiny_cnn", "cannot be used with dataset=imagenet"),
        ("source=resnet51", "not one of"),
        ("eval.victims=[resnet50,foo]", "foo"),
        ("generator.ch=24", "divisible by 16"),
        ("image_size=100", "divisible by 8"),
        ("resize=200", "resize=200"),
        ("device=gpu", "device='gpu'"),
        ("es.kinds=[easy,medium]", "subset"),
        ("train.crop_scale=[1.0,0.5]", "low <= high"),
        ("quick.gen_seeds=[7]", "not among quick.seeds"),
        ("train.epochz=3", "unknown config key"),
    ],
)
def test_bad_config_values_are_rejected_when_built(override, match):
    with pytest.raises(ConfigError, match=match):
        _cfg("esma_resnet50", override)


def test_quick_reads_its_shipped_config():
    cfg = quick_config()
    assert cfg == _cfg("quick").quick and cfg.seeds == [0, 1, 2] and cfg.size == 8
    full = quick_config(quick=False)
    assert full.size == 16 and full.attack_images == 0 and full.gen_seeds == cfg.seeds


def test_cli_show_config_and_user_errors(tmp_path, capsys, evil_file):
    assert main(["show-config", "--config", "esma_vgg19bn"]) == 0
    shown = capsys.readouterr().out
    assert "source: vgg19_bn" in shown and "legacy_double_normalize: false" in shown

    def user_error(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in err, err

    user_error(
        ["show-config", "--config", "esma_resnet50", "train.epochz=3"], "unknown config key", "train.epochz"
    )
    user_error(["show-config", "--config", "esma_resnet50", "eval.eps=-1"], "eval.eps")
    user_error(["show-config", "--config", "no_such_config"], "not found")
    missing = tmp_path / "no_imagenet"
    user_error(["screen", "--config", "esma_resnet50", "--out", str(tmp_path), f"imagenet_root={missing}",
                "pretrained=false"], "ImageNet train split", str(missing))  # fmt: skip
    user_error(
        ["pretrain", "--config", "digits_tiny", "--bank", str(tmp_path / "nobank.safetensors")], "esma screen"
    )
    (tmp_path / "damaged.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{broken")
    user_error(["eval", "--config", "digits_tiny", "--out", str(tmp_path), "--checkpoint",
                str(tmp_path / "damaged.safetensors")], "damaged.safetensors")  # fmt: skip
    path, target = evil_file
    user_error(["eval", "--config", "digits_tiny", "--out", str(tmp_path), "--checkpoint", str(path)],
               str(path), "could run code")  # fmt: skip
    assert not target.exists()
    (tmp_path / "afile").write_text("x")
    user_error(["screen", "--config", "digits_tiny", "--out", str(tmp_path / "afile")], "is a file")
    user_error(["eval", "--config", "digits_tiny", "--out", str(tmp_path), "--ttp", "24:x"], "TARGET=FILE")
    user_error(["eval", "--config", "digits_tiny", "--out", str(tmp_path)], "--checkpoint")


def test_pretrained_weights_missing_offline_gives_clear_error(monkeypatch, tmp_path):
    from esma.experiment import build_source

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="not available offline"):
        build_source(_cfg("esma_resnet50"))


def test_damaged_digits_model_cache_is_rebuilt(tmp_path):
    from esma.experiment import build_source

    cfg = _cfg("digits_tiny", f"out_dir={tmp_path}", "digits_size=8", "digits_source_epochs=1")
    a = build_source(cfg)
    cache = next((tmp_path / "digits_tiny").glob("digits_tiny_cnn_*.safetensors"))
    cache.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="rebuilding the damaged model cache"):
        b = build_source(cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_source(cfg)  # the rebuilt cache loads without a warning


def test_claims_are_computed_from_numbers():
    cfg = QuickConfig(n_bins=3, seeds=[0, 1, 2], gen_seeds=[0])
    base = {"gap_bin0": 0.1, "gap_bin2": 0.5, "agree_bin0": 99.0, "agree_bin2": 80.0, "mi_easy_victims": 30.0,
            "mi_random_victims": 25.0, "mi_hard_victims": 26.0}  # fmt: skip
    per_seed = [dict(base), dict(base, mi_easy_victims=20.0), dict(base, mi_easy_victims=31.0)]
    per_seed[0].update(gen_easy_victims=12.0, gen_hard_victims=12.0, gen_easy_bf16_victims=11.5)
    st = storage_ratio()
    assert st["esma_params"] == 4_397_635 and st["ttp_params"] == 7_841_411
    assert st["ratio_pct"] == pytest.approx(100 * 4_397_635 / 78_414_110)
    c = {x.method: x for x in build_claims(per_seed, cfg, st)}
    assert c["gap_bin0"].holds and c["agree_bin0"].holds and c["gap_bin0"].paired["n"] == 3
    easy = c["mi_easy_victims"]  # mean 27 >= 25 and 2 of 3 seeds win
    assert easy.holds and easy.paired["wins"] == 2 and easy.paired["diff"] == pytest.approx([5.0, -5.0, 6.0])
    assert not c["mi_random_victims"].holds  # 25 < 26
    assert not c["gen_easy_victims"].holds and c["gen_easy_victims"].paired is None  # strict >, one seed
    assert c["gen_easy_bf16_victims"].holds  # 11.5 >= 12 - 1
    assert c["esma / 10 TTP (%)"].holds
    mean, std = aggregate([{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    assert mean == {"a": 2.0, "b": 2.0} and std["a"] == pytest.approx(2**0.5) and std["b"] == 0.0


@pytest.mark.slow
def test_cli_pipeline_on_digits(tmp_path, capsys):
    args = _tiny(tmp_path)
    run = tmp_path / "digits_tiny"
    assert main(["screen", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["q"] == 5 and len(out["selected_per_class"]) == 10
    assert main(["train", *args, "--bank", str(run / "bank.safetensors")]) == 0
    assert (run / "stage1.safetensors").is_file() and (run / "stage2" / "generator.safetensors").is_file()
    assert main(["train", *args, "--bank", str(run / "bank.safetensors"), "--resume"]) == 0
    capsys.readouterr()
    gen = run / "stage2" / "generator.safetensors"
    assert main(["eval", *args, "--checkpoint", str(gen)]) == 0
    table = json.loads(capsys.readouterr().out)["table"]
    assert {r["victim"] for r in table} == {"tiny_cnn", "tiny_cnn_wide", "tiny_mlp"}
    with open(run / "transfer.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and {"source", "victim", "target", "success"} <= set(rows[0])
    assert all(r["protocol"] == "ttp-sub-source" for r in rows)
    from esma.data import digits_split

    yte = digits_split(8)["test"][1]
    assert all(int(r["n"]) == int((yte != int(r["target"])).sum()) for r in rows)  # sub-source: own class out
    bf16 = [
        "eval.bf16_mode=weights",
        "eval.channels_last=true",
        "--precision",
        "bf16",
    ]  # overrides follow args
    assert main(["eval", *args, *bf16, "--checkpoint", str(gen), "--csv", str(tmp_path / "b.csv")]) == 0
    bf16 = {(r["victim"]): r["success"] for r in json.loads(capsys.readouterr().out)["table"]}
    assert all(0 <= v <= 1 for v in bf16.values())
    assert main(["ttp-train", *args, "--target", "3"]) == 0
    assert (run / "ttp_3" / "generator.safetensors").is_file()
    capsys.readouterr()
    assert main(["es-iterative", *args, "es.steps=2"]) == 0
    summary = json.loads(capsys.readouterr().out)["table"]
    assert set(summary) == {"easy", "random", "hard", "ce"}
    with open(run / "es_mi.csv") as fh:
        es_rows = list(csv.DictReader(fh))
    assert len(es_rows) == 10 * 4 * 3 and all(int(r["n"]) == 20 for r in es_rows)


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    cfg = QuickConfig(seeds=[0], gen_seeds=[0], model_epochs=2, attack_steps=3, attack_images=3, gen_steps=2,
                      gen_batch=16, pretrain_steps=2, n_bins=3)  # fmt: skip
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert res.package == "esma" and len(res.claims) == 7
    assert all((tmp_path / p).is_file() for p in res.plots)
    m = res.metrics["mean"]
    for c in res.claims:
        if c.method in m:
            assert c.method_value == pytest.approx(m[c.method])
    assert 0 <= m["gen_easy_victims"] <= 100 and 0 <= m["gen_easy_bf16_victims"] <= 100
    again = quick_reproduction(tmp_path / "again", cfg=cfg)
    assert again.metrics == res.metrics  # same seed, same numbers
