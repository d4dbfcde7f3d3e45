import json

import pytest
import torch

from papers_shared.checkpoints import save_safetensors
from papers_shared.cli import list_configs, resolve_config
from papers_shared.config import ConfigError, load_config
from papers_shared.testing import CodeRunningPickle
from t_switch.cli import main
from t_switch.config import DigitsConfig, ExperimentConfig
from t_switch.quick import build_claims, load_quick_config, quick_reproduction


def _files(tmp_path, tiny):
    pre, fts = tiny
    save_safetensors(pre.state_dict(), tmp_path / "pre.safetensors")
    args = []
    for t, m in fts.items():
        torch.save(m.state_dict(), tmp_path / f"{t}.pt")
        args.append(f"{t}={tmp_path / f'{t}.pt'}")
    return str(tmp_path / "pre.safetensors"), args


def test_compress_and_report(tmp_path, tiny, capsys):
    pre, args = _files(tmp_path, tiny)
    out = tmp_path / "bank"
    rc = main(
        ["compress", "--pretrained", pre, "--finetuned", *args, "--out", str(out), "switch.drop_ratio=0.7"]
    )
    assert rc == 0 and (out / "switches.safetensors").is_file() and (out / "storage.json").is_file()
    rep = json.loads(capsys.readouterr().out)
    assert rep["num_tasks"] == 3 and 0 < rep["density"] < 0.5
    assert main(["report", str(out / "switches.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["num_tasks"] == 3
    rc = main(
        ["compress", "--pretrained", pre, "--finetuned", *args, "--out", str(out), "switch.drop_rato=0.7"]
    )
    assert rc == 2 and "unknown config key" in capsys.readouterr().err


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_missing_local_checkpoint_is_file_not_found(tmp_path, tiny, capsys):
    pre, args = _files(tmp_path, tiny)
    missing = tmp_path / "missing.pt"
    rc = main(["compress", "--pretrained", pre, "--finetuned", f"a={missing}", "--out", str(tmp_path / "o")])
    err = _one_line_error(capsys, rc, "file not found", str(missing), "local path")
    assert "HF hub" not in err
    rc = main(
        ["compress", "--pretrained", "nobody/not-cached", "--finetuned", *args, "--out", str(tmp_path / "o")]
    )
    _one_line_error(capsys, rc, "HF hub model 'nobody/not-cached'")


def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny, capsys):
    pre, args = _files(tmp_path, tiny)
    target = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": CodeRunningPickle(target)}, tmp_path / "evil.pt")
    rc = main(
        [
            "compress",
            "--pretrained",
            str(tmp_path / "evil.pt"),
            "--finetuned",
            *args,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    _one_line_error(capsys, rc, "refused to load", "evil.pt")
    assert not target.exists()
    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    _one_line_error(capsys, main(["report", str(tmp_path / "damaged.safetensors")]), "damaged.safetensors")
    _one_line_error(capsys, main(["report", str(tmp_path / "evil.pt")]), "evil.pt")
    (tmp_path / "afile").write_text("x")
    rc = main(["run", "--config", "quick", "--out", str(tmp_path / "afile")])
    _one_line_error(capsys, rc, "afile", "is a file")
    rc = main(["run", "--config", "vit_b32", "--out", str(tmp_path / "r"), f"pretrained={tmp_path / 'nope'}"])
    _one_line_error(capsys, rc, "file not found", "nope")
    rc = main(
        ["compress", "--pretrained", pre, "--finetuned", "no-equals-sign", "--out", str(tmp_path / "o")]
    )
    _one_line_error(capsys, rc, "TASK=SRC")


def test_unexpected_keys_warn_or_error(tmp_path, tiny, capsys):
    pre, fts = tiny
    save_safetensors(pre.state_dict(), tmp_path / "pre.safetensors")
    sd = dict(fts["t0"].state_dict())
    sd["extra.weight"] = torch.zeros(2)
    save_safetensors(sd, tmp_path / "ft.safetensors")
    args = [
        "compress",
        "--pretrained",
        str(tmp_path / "pre.safetensors"),
        "--finetuned",
        f"a={tmp_path / 'ft.safetensors'}",
    ]
    with pytest.warns(UserWarning, match="extra.weight"):
        assert main([*args, "--out", str(tmp_path / "o1")]) == 0
    capsys.readouterr()
    rc = main([*args, "--out", str(tmp_path / "o2"), "switch.unexpected_keys=error"])
    _one_line_error(capsys, rc, "extra.weight", "pre-trained ones lack")


@pytest.mark.parametrize(
    "override, match",
    [
        ("switch.drop_ratio=-1", "drop_ratio"),
        ("switch.drop_ratio=nan", "finite"),
        ("switch.group_size=0", "group_size"),
        ("auto.k=0", "auto.k"),
        ("auto.mode=hard", None),
        ("auto.temperature=0", "temperature"),
        ("baselines.methods=[bogus]", "bogus"),
        ("baselines.ties_k=1.5", "ties_k"),
        ("stages=[baselines,nope]", "nope"),
        ("lora.lr=-1", "lora.lr"),
        ("auto.k=900", "query samples"),
    ],
)
def test_config_validation(override, match):
    if match is None:  # a valid override
        assert (
            load_config(ExperimentConfig, resolve_config("t_switch", "vit_b32"), [override]).auto.mode
            == "hard"
        )
        with pytest.raises(ConfigError, match="temperature"):
            load_config(ExperimentConfig, None, [override, "auto.temperature=0.5"])
        return
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, resolve_config("t_switch", "vit_b32"), [override])


def test_digits_config_cross_checks():
    with pytest.raises(ConfigError, match="must include 0.5"):
        DigitsConfig(ratios=[0.0, 0.6])
    with pytest.raises(ConfigError, match="router_features"):
        DigitsConfig(router_features=["pixels"])
    with pytest.raises(ConfigError, match="exceeds"):
        DigitsConfig(router_ks=[500])
    with pytest.raises(ConfigError, match="routing_threshold"):
        DigitsConfig(routing_threshold=120.0)
    with pytest.raises(ConfigError, match="tasks"):
        ExperimentConfig(kind="digits", tasks=["SUN397"])
    with pytest.raises(ConfigError, match="kind=glue"):
        ExperimentConfig(kind="glue", tasks=["cola", "imdb"])


def test_shipped_configs_load_and_show(capsys):
    names = list(list_configs("t_switch"))
    assert set(names) == {"quick", "roberta_glue", "vit_b32", "vit_b32_lora", "vit_l14"}
    for name in names:
        cfg = load_config(ExperimentConfig, resolve_config("t_switch", name))
        assert cfg.name == name
        assert resolve_config("t_switch", name).read_text().startswith("# ")
        assert main(["show-config", "--config", name]) == 0
    lora = load_config(ExperimentConfig, resolve_config("t_switch", "vit_b32_lora"))
    assert lora.switch.drop_ratio == 0.4 and lora.kind == "vit_lora" and lora.auto.k == 10
    glue = load_config(ExperimentConfig, resolve_config("t_switch", "roberta_glue"), ["auto.k=7"])
    assert glue.auto.mode == "hard" and glue.auto.k == 7 and glue.eval_subset == 500
    assert load_quick_config().seeds == [0, 1, 2, 3, 4]
    capsys.readouterr()
    assert main(["show-config", "--config", "quick", "switch.drop_ratio=-1"]) == 2
    assert "drop_ratio" in capsys.readouterr().err
    assert main(["list-configs"]) == 0
    assert "vit_b32" in capsys.readouterr().out


def _fake_seed(i: int, **over) -> dict:
    m = {"individual": 94.0, "t_switch@0.0": 92.0, "t_switch@0.5": 93.5, "t_switch@0.6": 93.0,
         "sparse@0.0": 93.5, "sparse@0.5": 93.0, "sparse@0.6": 93.9, "task_arithmetic_best": 85.0,
         "auto_switch": 89.0, "routing_sample_accuracy": 95.0, "storage_pct_fp32": 3.9}  # fmt: skip
    m.update(over)
    return {k: v + 0.01 * i for k, v in m.items()}


def test_claims_are_computed_from_numbers():
    cfg = DigitsConfig(ratios=[0.0, 0.5, 0.6], seeds=[0, 1, 2, 3, 4])
    per_seed = [_fake_seed(i) for i in range(5)]
    claims = {c.claim.split(":")[0].split(" (")[0]: c for c in build_claims(per_seed, cfg, cfg.seeds)}
    assert all(c.holds for c in claims.values()), [c.claim for c in claims.values() if not c.holds]
    nonin = next(c for k, c in claims.items() if k.startswith("binarized within 0.5"))
    assert nonin.paired["n"] == 5 and nonin.paired["diff_mean"] == pytest.approx(-0.2)
    # routing below the threshold on one seed fails the claim (min_wins = every seed)
    per_seed[2]["routing_sample_accuracy"] = 80.0
    routing = [c for c in build_claims(per_seed, cfg, cfg.seeds) if "routes" in c.claim][0]
    assert not routing.holds and routing.paired["wins"] == 4
    # binarized 1 point under sparse-only everywhere: not within 0.5
    bad = [_fake_seed(i, **{"t_switch@0.5": 92.0, "t_switch@0.6": 92.9}) for i in range(5)]
    assert not [c for c in build_claims(bad, cfg, cfg.seeds) if c.claim.startswith("binarized within")][
        0
    ].holds


@pytest.mark.slow
def test_quick_reproduction_tiny_budget(tmp_path):
    cfg = DigitsConfig(
        seeds=[0, 1], hidden=32, finetune_epochs=1, ratios=[0.0, 0.5, 0.6], ta_alphas=[0.3], baselines=["ties"],
        n_query=8, knn_k=3, router_ks=[1, 3], router_temperatures=[1.0, 0.5],
    )  # fmt: skip
    res = quick_reproduction(tmp_path, cfg=cfg)
    assert res.package == "t-switch" and len(res.claims) == 9
    assert all((tmp_path / p).is_file() for p in res.plots)
    m = res.metrics["mean"]
    assert 0 < m["storage_pct_fp32"] < 10 and 0 <= m["auto_switch"] <= 100
    assert len(res.metrics["router"]["chosen"]) == 2
    assert {row["k"] for row in res.metrics["router"]["validation_grid"]} == {1, 3}
    again = quick_reproduction(tmp_path / "again", cfg=cfg)
    assert again.metrics["per_seed"] == res.metrics["per_seed"]  # same seeds, same numbers
