"""Adversarial-attack primitives shared by the ``esma`` and ``ibta`` packages.

Conventions: images are float ``(N, C, H, W)`` in [0, 1]; every classifier takes [0, 1] input
(normalisation and resize live in :class:`ImageNetWrapper`, never in the attacks); attacks are
called torchattacks-style, ``adv = attack(images, labels)`` (labels are target ids when
``attack.targeted``), and return detached adversarial images. Every random operation accepts an
optional ``torch.Generator``.

Sub-modules: :mod:`.ops` (projections, DI / TI / SI / Admix / spectrum transforms, momentum),
:mod:`.losses`, :mod:`.models` (wrappers, registry, ensembles, tiny models), :mod:`.engine`
(:class:`IterativeAttack`, the loop with its hooks), the presets by family -- :mod:`.gradient` (I-FGSM,
MI-FGSM, VMI-FGSM), :mod:`.input_transform` (DI, TI, SI-NI, Admix, SSA), :mod:`.objective` (Logit,
Po+Trip), :mod:`.minmax` (RAP) -- and :mod:`.registry` (``get_attack(name, model, ...)``),
:mod:`.generative`, :mod:`.evaluate`. Method-specific variants live in their packages (IBTA's RAP and
S2I settings in ``ibta.baselines``).
"""

from . import (
    engine,
    evaluate,
    generative,
    gradient,
    input_transform,
    iterative,
    losses,
    minmax,
    models,
    objective,
    ops,
    registry,
)
from .engine import DEFAULT, AttackState, IterativeAttack, repeat_labels
from .evaluate import PROTOCOLS, l2_distance, linf_distance, mean_over_targets, success_rate, transfer_matrix
from .generative import GenerativeAttack
from .gradient import IFGSM, MIFGSM, VMIFGSM
from .input_transform import DIFGSM, SINIFGSM, SSA, TIFGSM, Admix
from .losses import LOSSES, ce, get_loss, logit_loss, po_trip, smooth_l1_match, symmetric_kl
from .minmax import RAP
from .models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_REGISTRY,
    ImageNetWrapper,
    MeanLogitEnsemble,
    ModelSpec,
    NormalizedLogitEnsemble,
    load_model,
    tiny_cnn,
    tiny_mlp,
)
from .objective import LogitAttack, PoTrip
from .ops import (
    GaussianSmoothing,
    admix,
    dct_2d,
    gaussian_kernel,
    generator_smoothing,
    idct_2d,
    input_diversity,
    l1_mean_normalize,
    momentum_update,
    project_generated,
    project_l2,
    project_linf,
    scale_copies,
    spectrum_transform,
    ti_smooth,
)
from .registry import (
    PRESETS,
    attack_class,
    create_attack,
    get_attack,
    list_attacks,
    presets,
    register_preset,
)

__all__ = [
    "DEFAULT",
    "DIFGSM",
    "IFGSM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOSSES",
    "MIFGSM",
    "MODEL_REGISTRY",
    "PRESETS",
    "PROTOCOLS",
    "RAP",
    "SINIFGSM",
    "SSA",
    "TIFGSM",
    "VMIFGSM",
    "Admix",
    "AttackState",
    "GaussianSmoothing",
    "GenerativeAttack",
    "ImageNetWrapper",
    "IterativeAttack",
    "LogitAttack",
    "MeanLogitEnsemble",
    "ModelSpec",
    "NormalizedLogitEnsemble",
    "PoTrip",
    "admix",
    "ce",
    "create_attack",
    "dct_2d",
    "evaluate",
    "gaussian_kernel",
    "generative",
    "generator_smoothing",
    "get_loss",
    "idct_2d",
    "input_diversity",
    "iterative",
    "l1_mean_normalize",
    "l2_distance",
    "linf_distance",
    "load_model",
    "logit_loss",
    "losses",
    "mean_over_targets",
    "models",
    "momentum_update",
    "ops",
    "po_trip",
    "presets",
    "project_generated",
    "project_l2",
    "project_linf",
    "register_preset",
    "repeat_labels",
    "scale_copies",
    "smooth_l1_match",
    "spectrum_transform",
    "success_rate",
    "symmetric_kl",
    "ti_smooth",
    "tiny_cnn",
    "tiny_mlp",
    "transfer_matrix",
    "attack_class",
    "engine",
    "get_attack",
    "gradient",
    "input_transform",
    "list_attacks",
    "minmax",
    "objective",
    "registry",
]
