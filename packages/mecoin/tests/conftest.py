import pytest
import torch

from mecoin import (
    BaselineConfig,
    CSBMConfig,
    EncoderConfig,
    ExperimentConfig,
    GCNEncoder,
    Mecoin,
    MecoinConfig,
    PretrainConfig,
    ProtocolConfig,
)
from papers_shared.data.graph import make_csbm_graph

# Tiny sizes: h=16, C=4, P=8, K_tot=6, graphs of 30-60 nodes.
H, C, P, K = 16, 4, 8, 6


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors: one thread avoids OpenMP contention on shared 2-core machines.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def graph():
    """6 classes x 10 nodes, 8 features (CSBM)."""
    return make_csbm_graph(num_classes=K, nodes_per_class=10, feat_dim=8, p_in=0.3, p_out=0.02, seed=0)


@pytest.fixture
def tiny_cfg():
    return MecoinConfig(num_classes=K, num_codebooks=C, keys_per_codebook=P, proj_dim=5, epochs_per_session=5)


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return Mecoin(GCNEncoder(8, H), tiny_cfg)


def _tiny_experiment(**mecoin) -> ExperimentConfig:
    """A whole protocol on a 6-class CSBM (base 2, two 2-way 3-shot sessions) in well under a second."""
    base = dict(num_codebooks=C, keys_per_codebook=P, proj_dim=5, epochs_per_session=10)
    return ExperimentConfig(
        name="tiny",
        dataset="csbm",
        methods=["mecoin"],
        seeds=[0],
        progress=False,
        device="cpu",
        csbm=CSBMConfig(num_classes=6, nodes_per_class=20, feat_dim=8, p_in=0.2, p_out=0.02),
        protocol=ProtocolConfig(base_classes=2, ways=2, shots=3),
        encoder=EncoderConfig(hidden=H),
        pretrain=PretrainConfig(max_epochs=20),
        mecoin=MecoinConfig(**{**base, **mecoin}),
        baselines=BaselineConfig(epochs=10, probe_epochs=50),
    )


@pytest.fixture
def tiny_experiment():
    """Factory: ``tiny_experiment(**mecoin_overrides) -> ExperimentConfig``."""
    return _tiny_experiment
