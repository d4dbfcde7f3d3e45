"""FSG: Fast and Slow Gradient generation for binary neural networks (AAAI 2025), with the STE and
MetaQuant baselines, in PyTorch.

>>> import fsg_bnn
>>> model = fsg_bnn.binarize(fsg_bnn.resnet20())          # 1-bit DoReFa weights (all conv/FC layers)
>>> opt = fsg_bnn.FSGOptimizer(model, lr=1e-3)            # fast + slow nets, HGS, LRE (paper Fig. 1)
"""

from fsg_bnn.baselines import MetaQuantOptimizer
from fsg_bnn.config import (
    ARCHS,
    BASE_OPTIMIZERS,
    METAQUANT_METHODS,
    METHODS,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from fsg_bnn.convert import binarize, binary_layers
from fsg_bnn.fsg import FSGOptimizer, build_optimizer
from fsg_bnn.hgs import HistoricalGradientStorage
from fsg_bnn.hypernets import LSTMFC, FastNet, FCGrad, MultiFC, S4SequenceModel, S5SequenceModel, SlowNet
from fsg_bnn.layers import BinaryConv2d, BinaryLayer, BinaryLinear
from fsg_bnn.lookahead import MetaGradientOptimizer, adam_refine, sgd_refine
from fsg_bnn.models import (
    ResNetCifar,
    build_model,
    load_fp_checkpoint,
    mlp,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet_cifar,
)
from fsg_bnn.quant import RoundSTE, SignSTE, calibration, dorefa_preprocess, preprocess, quantize

__version__ = "0.1.0"

__all__ = [
    "ARCHS",
    "BASE_OPTIMIZERS",
    "LSTMFC",
    "METAQUANT_METHODS",
    "METHODS",
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "DataConfig",
    "ExperimentConfig",
    "FCGrad",
    "FSGOptimizer",
    "FastNet",
    "HistoricalGradientStorage",
    "MetaGradientOptimizer",
    "MetaQuantOptimizer",
    "ModelConfig",
    "MultiFC",
    "OptimConfig",
    "ResNetCifar",
    "RoundSTE",
    "S4SequenceModel",
    "S5SequenceModel",
    "SignSTE",
    "SlowNet",
    "TrainConfig",
    "adam_refine",
    "binarize",
    "binary_layers",
    "build_model",
    "build_optimizer",
    "calibration",
    "dorefa_preprocess",
    "load_fp_checkpoint",
    "mlp",
    "preprocess",
    "quantize",
    "resnet110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet_cifar",
    "sgd_refine",
]
