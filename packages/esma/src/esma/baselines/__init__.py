"""The paper's baselines: TTP (one generator per target; Naseer et al., ICCV 2021). The iterative
baselines (MI / DI / TI / Logit / Po+Trip) come from :mod:`papers_shared.attacks`."""

from .ttp import (
    TTPAttack,
    TTPGenerator,
    TTPTrainer,
    load_ttp_checkpoint,
    random_rotation,
    save_ttp_generator,
    simple_augment,
    ttp_loss,
)

__all__ = [
    "TTPAttack",
    "TTPGenerator",
    "TTPTrainer",
    "load_ttp_checkpoint",
    "random_rotation",
    "save_ttp_generator",
    "simple_augment",
    "ttp_loss",
]
