import dataclasses

import pytest

from icl_vmf.config import ExperimentConfig, LossConfig, System1Config, TrainConfig
from papers_shared.cli import list_configs
from papers_shared.config import ConfigError, load_config

SHIPPED = list_configs("icl_vmf")


def test_configs_ship_and_describe_themselves():
    assert {"quick", "base", "seq_cifar10", "seq_imagenet_r", "system2_cifar100_llava15_7b"} <= set(SHIPPED)
    for name, path in SHIPPED.items():
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 10, name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_config_loads(name):
    cfg = load_config(ExperimentConfig, SHIPPED[name])
    assert cfg.methods and cfg.system1.hidden_dim < cfg.system1.memory_dim


def test_paper_configs_follow_the_official_code():
    c10 = load_config(ExperimentConfig, SHIPPED["seq_cifar10"])
    assert (c10.data.num_tasks, c10.train.buffer_size, c10.train.reset_optimizers_each_task) == (
        5,
        500,
        False,
    )
    assert (c10.loss.kappa, c10.loss.lmbda, c10.loss.delta, c10.train.em_steps, c10.train.lr) == (
        1.0, 0.1, 0.01, 60, 1e-4,
    )  # fmt: skip
    imr = load_config(ExperimentConfig, SHIPPED["seq_imagenet_r_buf200"])
    assert (imr.data.num_tasks, imr.train.buffer_size, imr.train.reset_optimizers_each_task, imr.augment.hflip) == (
        10, 200, True, False,
    )  # fmt: skip
    s2 = load_config(ExperimentConfig, SHIPPED["system2_cifar100_llava15_7b"])
    assert s2.system2.enabled and s2.system2.k == 5 and s2.system1.hidden_dim == 768
    # every paper config keeps the official separate current / replay matrices
    for name, path in SHIPPED.items():
        cfg = load_config(ExperimentConfig, path)
        if cfg.data.dataset != "digits":
            assert not cfg.loss.mix_replay and not cfg.icl_variants, name


def test_quick_config_variants():
    cfg = load_config(ExperimentConfig, SHIPPED["quick"])
    assert cfg.loss_for("icl") == LossConfig()
    assert cfg.loss_for("icl_mix").mix_replay and cfg.loss_for("icl_mix").kappa == 1.0
    assert cfg.loss_for("icl_kappa01") == LossConfig(kappa=0.1)
    assert cfg.is_icl("icl_mix_kappa01") and not cfg.is_icl("er")
    assert len(cfg.seeds) >= 5 and cfg.data.pretrain_seed == 0


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lrr=1", "valid keys"),
        ("methods=[icl,foo]", "unknown method"),
        ("methods=[icl,icl]", "twice"),
        ("seeds=[]", "seeds is empty"),
        ("seeds=[-1]", "seeds"),
        ("system2.backend=gpt", "system2.backend"),
        ("system1.hidden_dim=2048", "hidden_dim"),
        ("loss.kappa=0", "kappa"),
        ("loss.kappa=nan", "finite"),
        ("train.lr=-1", "train.lr"),
        ("train.lr=inf", "finite"),
        ("train.batch_size=0", "batch_size"),
        ("train.em_index=step", "em_index"),
        ("train.buffer_dtype=int8", "buffer_dtype"),
        ("train.buffer_admission=best", "buffer_admission"),
        ("odi.scope=global", "odi.scope"),
        ("odi.random_fraction=1.5", "random_fraction"),
        ("system2.oracle_accuracy=-0.1", "oracle_accuracy"),
        ("system2.k=0", "system2.k"),
        ("system2.dtype=int8", "system2.dtype"),
        ("system2.parse_mode=regex", "parse_mode"),
        ("augment.crop_scale=[0.9,0.5]", "crop_scale"),
        ("augment.grayscale_p=2", "grayscale_p"),
        ("data.dataset=mnist", "data.dataset"),
        ("data.num_tasks=3", "do not split"),
        ("data.train_fraction=1", "train_fraction"),
        ("icl_variants={icl: {kappa: 0.1}}", "new name"),
        ("icl_variants={v: {kapa: 0.1}}", "icl_variants.v"),
        ("icl_variants={v: {kappa: -1}}", "kappa"),
        ("parallel_runs=0", "parallel_runs"),
    ],
)
def test_bad_values_are_refused_when_built(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ExperimentConfig, SHIPPED["base"], [override])


def test_python_construction_validates_like_yaml():
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="hidden_dim"):
        System1Config(hidden_dim=1024, memory_dim=1024)
    cfg = ExperimentConfig(methods=["icl", "v"], icl_variants={"v": {"mix_replay": True}})
    assert cfg.loss_for("v").mix_replay and not cfg.loss.mix_replay
    with pytest.raises(ConfigError, match="unknown method"):
        dataclasses.replace(cfg, icl_variants={})
