"""G2G-FSCIL: graph-to-graph explicit memory (G2G, LGP, CAG2G) for few-shot class-incremental learning.

Reconstruction of Qi et al., "Contrastive Augmented Graph2Graph Memory Interaction for Few Shot
Continual Learning" (TCSVT 2025, arXiv 2403.04140) on top of the C-FSCIL V2V explicit memory
(Hersche et al., CVPR 2022).
"""

from g2g_fscil.baselines.v2v import nudge_prototypes, nudging_loss
from g2g_fscil.cag2g import augment_batch, cag2g_loss
from g2g_fscil.config import ExperimentConfig, G2GConfig, preset
from g2g_fscil.experiment import evaluate, run_fscil, write_base_memory
from g2g_fscil.graphs import collapse_index, cosine_adjacency, local_features, offdiag_vec, represent
from g2g_fscil.interaction import g2g_similarity, sharpen, softabs, v2v_similarity
from g2g_fscil.lgp import backbone_graph, lgp_loss
from g2g_fscil.losses import cosine_align_loss, episode_bce_loss
from g2g_fscil.memory import ExplicitMemory
from g2g_fscil.model import G2GNet
from g2g_fscil.trainer import incremental_session, metatrain, pretrain

__all__ = [
    "ExperimentConfig",
    "ExplicitMemory",
    "G2GConfig",
    "G2GNet",
    "augment_batch",
    "backbone_graph",
    "cag2g_loss",
    "collapse_index",
    "cosine_adjacency",
    "cosine_align_loss",
    "episode_bce_loss",
    "evaluate",
    "g2g_similarity",
    "incremental_session",
    "lgp_loss",
    "local_features",
    "metatrain",
    "nudge_prototypes",
    "nudging_loss",
    "offdiag_vec",
    "preset",
    "pretrain",
    "represent",
    "run_fscil",
    "sharpen",
    "softabs",
    "v2v_similarity",
    "write_base_memory",
]
