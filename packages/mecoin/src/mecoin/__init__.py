"""Mecoin: an efficient memory module for graph few-shot class-incremental learning
(Li, Zhang, Gao, Qi, NeurIPS 2024; arXiv 2411.06659), on torch_geometric.

Components: the GNN encoder (:mod:`mecoin.encoders`), MeCo = GraphInfo + Gaussian random projection +
interaction (:mod:`mecoin.meco`), SMU (:mod:`mecoin.smu`), MRaM (:mod:`mecoin.mram`), GKIM
(:mod:`mecoin.gkim`), the model (:mod:`mecoin.model`) and Mecoin as a method of the session runner
(:mod:`mecoin.method`). The baselines (:mod:`mecoin.baselines`) share the training loops
(:mod:`mecoin.trainer`) and the table runner (:mod:`mecoin.experiment`).
"""

from mecoin.baselines import ProbeBaseline, PrototypeBaseline, SupervisedBaseline, teen_calibrate
from mecoin.config import (
    BaselineConfig,
    CSBMConfig,
    EncoderConfig,
    ExperimentConfig,
    MecoinConfig,
    PretrainConfig,
    ProtocolConfig,
)
from mecoin.data import GFSCILTask, build_task, legacy_base_session, load_graph
from mecoin.encoders import ConvEncoder, GATEncoder, GCNEncoder, build_encoder
from mecoin.experiment import (
    build_method,
    evaluate_memory,
    run_ablation,
    run_experiment,
    run_gfscil,
    summarize,
)
from mecoin.gkim import gkim_loss, kl_divergence, symmetric_kl
from mecoin.graph import SessionGraphs, gcn_adjacency, symmetric_edges
from mecoin.meco import GaussianRandomProjection, GraphInfo, MemoryInteraction
from mecoin.method import MecoinMethod
from mecoin.model import GNNHead, Mecoin, MecoinOutput, load_mecoin, save_mecoin
from mecoin.mram import MRaM
from mecoin.session import GFSCILMethod, SessionContext, evaluate_session
from mecoin.smu import StructuredMemoryUnit
from mecoin.trainer import PretrainResult, pretrain_encoder, pretrain_task, run_method

__version__ = "0.1.0"

__all__ = [
    "BaselineConfig",
    "CSBMConfig",
    "ConvEncoder",
    "EncoderConfig",
    "ExperimentConfig",
    "GATEncoder",
    "GCNEncoder",
    "GFSCILMethod",
    "GFSCILTask",
    "GNNHead",
    "GaussianRandomProjection",
    "GraphInfo",
    "MRaM",
    "Mecoin",
    "MecoinConfig",
    "MecoinMethod",
    "MecoinOutput",
    "MemoryInteraction",
    "PretrainConfig",
    "PretrainResult",
    "ProbeBaseline",
    "PrototypeBaseline",
    "ProtocolConfig",
    "SessionContext",
    "SessionGraphs",
    "StructuredMemoryUnit",
    "SupervisedBaseline",
    "build_encoder",
    "build_method",
    "build_task",
    "evaluate_memory",
    "evaluate_session",
    "gcn_adjacency",
    "gkim_loss",
    "kl_divergence",
    "legacy_base_session",
    "load_graph",
    "load_mecoin",
    "pretrain_encoder",
    "pretrain_task",
    "run_ablation",
    "run_experiment",
    "run_gfscil",
    "run_method",
    "save_mecoin",
    "summarize",
    "symmetric_edges",
    "symmetric_kl",
    "teen_calibrate",
]
