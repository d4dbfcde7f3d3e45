"""Mecoin: an efficient memory module for graph few-shot class-incremental learning
(Li et al., NeurIPS 2024; arXiv 2411.06659), on torch_geometric.

Components (spec §3): GNN encoder (:mod:`mecoin.encoders`), MeCo = GraphInfo + Gaussian random
projection + interaction (:mod:`mecoin.meco`), SMU (:mod:`mecoin.smu`), MRaM (:mod:`mecoin.mram`),
GKIM (:mod:`mecoin.gkim`), the model (:mod:`mecoin.model`) and its session trainer
(:mod:`mecoin.trainer`); the baselines of spec §4 (:mod:`mecoin.baselines`) share the session runner
(:mod:`mecoin.runner`).
"""

from mecoin.baselines import PrototypeBaseline, SupervisedBaseline, teen_calibrate
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
from mecoin.encoders import ConvEncoder, GATEncoder, GCNEncoder, build_encoder, pretrain_encoder
from mecoin.gkim import gkim_loss, kl_divergence, symmetric_kl
from mecoin.graph import SessionGraphs, gcn_adjacency, symmetric_edges
from mecoin.meco import GaussianRandomProjection, GraphInfo, MemoryInteraction
from mecoin.model import GNNHead, Mecoin, MecoinOutput
from mecoin.mram import MRaM
from mecoin.runner import build_method, pretrain_task, run_experiment, run_gfscil, run_method, summarize
from mecoin.session import GFSCILMethod, SessionContext, evaluate_session
from mecoin.smu import StructuredMemoryUnit
from mecoin.trainer import MecoinTrainer

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
    "MecoinOutput",
    "MecoinTrainer",
    "MemoryInteraction",
    "PretrainConfig",
    "PrototypeBaseline",
    "ProtocolConfig",
    "SessionContext",
    "SessionGraphs",
    "StructuredMemoryUnit",
    "SupervisedBaseline",
    "build_encoder",
    "build_method",
    "build_task",
    "evaluate_session",
    "gcn_adjacency",
    "gkim_loss",
    "kl_divergence",
    "legacy_base_session",
    "load_graph",
    "pretrain_encoder",
    "pretrain_task",
    "run_experiment",
    "run_gfscil",
    "run_method",
    "summarize",
    "symmetric_edges",
    "symmetric_kl",
    "teen_calibrate",
]
