"""Typed configs (YAML round-trip through :mod:`papers_shared.config`).

Every knob of spec §3 is a field with the spec's default; ``[ours]`` choices are fields with the
spec's default; the official code's quirks (spec §6) are ``legacy_*`` fields, all switched on at
once by ``legacy=True`` (which also sets ``vote_scale=3``, ``mask_unseen=False``,
``renormalize_masked=False`` and ``restore_head=False``, as in the official code).

Layout of an experiment file (``configs/*.yaml``)::

    name, dataset, data_root, seeds, methods, device, out_dir, legacy
    protocol:  session protocol shared by every method (spec §2, §5, §6)
    encoder:   GNN backbone (spec §3.1)
    pretrain:  base-session pre-training (spec §3.1)
    mecoin:    the method (spec §3.2-§3.10)
    baselines: the baselines of spec §4
    csbm:      the synthetic graph of spec §8 (``dataset: csbm``)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BaselineConfig",
    "CSBMConfig",
    "EncoderConfig",
    "ExperimentConfig",
    "MecoinConfig",
    "PretrainConfig",
    "ProtocolConfig",
    "ABLATIONS",
    "DISTILL_MODES",
    "METHODS",
]

DISTILL_MODES = ("bidirectional", "gnn_to_mram", "mram_to_gnn", "none")
METHODS = ("mecoin", "finetune", "joint", "ncm", "teen", "ewc", "lwf", "ergnn")
#: Variants of ``mecoin ablate`` (spec §7): name -> MecoinConfig overrides. The first four are the
#: paper's ablation figure ([ours] definitions, spec §7); the ``distill_*`` ones the distillation study
#: (spec §3.12); the last two the [ours] readings of spec §3.4 and §3.9.
ABLATIONS = {
    "full": {},
    "no_inter": {"use_interaction": False},
    "no_graphinfo": {"use_graphinfo": False},
    "no_meco": {"use_interaction": False, "use_graphinfo": False},
    "distill_gnn_to_mram": {"distill": "gnn_to_mram"},
    "distill_mram_to_gnn": {"distill": "mram_to_gnn"},
    "distill_none": {"distill": "none"},
    "cross_interaction": {"interaction": "cross"},
    "class_layout": {"memory_layout": "class"},
}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


@dataclass
class MecoinConfig:
    """Mecoin hyper-parameters (spec §3.11 defaults; ``num_classes=0`` takes K_tot from the data)."""

    num_classes: int = 0
    # MeCo (spec §3.2-§3.4)
    num_codebooks: int = 100
    keys_per_codebook: int = 800
    proj_dim: int = 13
    use_graphinfo: bool = True
    use_interaction: bool = True
    interaction: str = "legacy_codebook"  # | "cross" [ours]
    graphinfo_heads: int = 2
    interaction_heads: int = 2
    attn_dropout: float = 0.5
    graphinfo_batch: str = "set"  # | "chunk" [ours]
    graphinfo_chunk: int = 4096
    # SMU (spec §3.5) and the class-key reading (spec §3.9)
    memory_layout: str = "codebook"  # | "class" [ours]
    ema_decay: float = 0.95
    laplace_eps: float = 1e-5
    dead_threshold_factor: float = 0.1
    construct_passes: int = 1
    construct_train_mode: bool = False  # [ours]; legacy: dropout on during construction
    class_key_ema: bool = False  # [ours] class layout: EMA-update a class key when it reappears
    # MRaM (spec §3.6)
    values_init: str = "zeros"
    vote_scale: float = 1.0
    mram_optimizer: str = "adam"  # | "sparse_adam" [ours]: only retrieved rows move
    # GNN head and GKIM (spec §3.7-§3.8)
    head_hidden: int = 64
    head_dropout: float = 0.5
    distill: str = "bidirectional"
    kl_weight: float = 0.5
    ce_weight: float = 1.0
    temperature: float = 1.0
    label_smoothing: float = 0.1
    # Training (spec §3.10)
    lr: float = 5e-4
    weight_decay: float = 0.0
    epochs_per_session: int = 2000
    grad_clip: float = 1.0
    replay_supports: bool = True
    restore_head: bool = True  # [ours]; the code restores only the Mecoin checkpoint (§6.12)
    query_chunk: int = 0  # nodes per retrieval chunk; 0 = automatic (bounded memory)
    # Official-code quirks (spec §6)
    legacy_mode_schedule: bool = False  # §6.14 train/eval flips
    legacy_shuffle_bug: bool = False  # §6.3 keys fitted on row-shuffled features
    legacy: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        _check_choice("interaction", self.interaction, ("legacy_codebook", "cross"))
        _check_choice("memory_layout", self.memory_layout, ("codebook", "class"))
        _check_choice("graphinfo_batch", self.graphinfo_batch, ("set", "chunk"))
        _check_choice("values_init", self.values_init, ("zeros", "rand", "randn"))
        _check_choice("mram_optimizer", self.mram_optimizer, ("adam", "sparse_adam"))
        _check_choice("distill", self.distill, DISTILL_MODES)
        for name in (
            "num_codebooks",
            "keys_per_codebook",
            "proj_dim",
            "graphinfo_heads",
            "interaction_heads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError(f"attn_dropout must lie in [0, 1), got {self.attn_dropout}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.legacy:
            self.apply_legacy()

    def apply_legacy(self) -> None:
        """Switch on every official quirk that lives in the method (spec §6)."""
        self.legacy = True
        self.legacy_mode_schedule = True
        self.legacy_shuffle_bug = True
        self.construct_train_mode = True
        self.restore_head = False
        self.vote_scale = 3.0

    @property
    def key_dim(self) -> int:
        """``d_k = d_p + 1`` with the GraphInfo scalar, else ``d_p`` (spec §3.3)."""
        return self.proj_dim + (1 if self.use_graphinfo else 0)


@dataclass
class ProtocolConfig:
    """Session protocol shared by every method (spec §2, §5, §6)."""

    base_classes: int = 50
    ways: int = 2
    shots: int = 5
    val_frac: float = 0.2
    num_sessions: int | None = None
    mask_unseen: bool = True  # [ours]; the code scores all K_tot outputs (§6.13)
    renormalize_masked: bool = True  # [ours]; the code reuses full-graph weights (§6.9)
    select_best_val: bool = True  # official: keep the best-validation state of each session
    legacy_split: bool = False  # §6.1 duplicated node lists (test leak)
    legacy_group_eval: bool = False  # §6.15 per-group batches for the accuracy matrix
    legacy: bool = False

    def __post_init__(self) -> None:
        if self.ways < 1 or self.shots < 1:
            raise ValueError("ways and shots must be >= 1")
        if not 0.0 <= self.val_frac < 1.0:
            raise ValueError(f"val_frac must lie in [0, 1), got {self.val_frac}")
        if self.legacy:
            self.apply_legacy()

    def apply_legacy(self) -> None:
        self.legacy = True
        self.legacy_split = True
        self.legacy_group_eval = True
        self.mask_unseen = False
        self.renormalize_masked = False


@dataclass
class EncoderConfig:
    """GNN backbone (spec §3.1): ``gcn`` (default), ``gat`` or any torch_geometric conv class name."""

    backbone: str = "gcn"
    hidden: int = 128
    dropout: float = 0.5
    heads: int = 8
    negative_slope: float = 0.2
    legacy_gat_logsoftmax: bool = False
    legacy: bool = False

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError("hidden must be >= 1")
        if self.legacy:
            self.apply_legacy()

    def apply_legacy(self) -> None:
        self.legacy = True
        self.legacy_gat_logsoftmax = True


@dataclass
class PretrainConfig:
    """Base-session pre-training (spec §3.1): Adam, NLL, early stopping on base validation."""

    lr: float = 5e-3
    weight_decay: float = 5e-4
    max_epochs: int = 2000
    eval_every: int = 10
    patience: int = 10
    legacy_no_zero_grad: bool = False  # §6.10 classifier gradients accumulate
    legacy: bool = False

    def __post_init__(self) -> None:
        if self.legacy:
            self.apply_legacy()

    def apply_legacy(self) -> None:
        self.legacy = True
        self.legacy_no_zero_grad = True


@dataclass
class BaselineConfig:
    """Baselines of spec §4 ([ours] defaults where the spec gives none)."""

    lr: float = 5e-3
    weight_decay: float = 5e-4
    epochs: int = 200
    finetune_encoder: bool = True  # spec §4: encoder + classifier; False: head only (spec §8 wording)
    train_base_session: bool = False  # session 0 model = the pre-trained encoder + classifier
    ewc_lambda: float = 10000.0
    lwf_lambda: float = 1.0
    lwf_temperature: float = 2.0
    er_per_class: int = 2
    ncm_temperature: float = 16.0
    teen_tau: float = 16.0
    teen_weight: float = 0.1


@dataclass
class CSBMConfig:
    """Synthetic contextual SBM (spec §8; ``papers_shared.data.graph.make_csbm_graph``)."""

    num_classes: int = 12
    nodes_per_class: int = 80
    feat_dim: int = 32
    p_in: float = 0.05
    p_out: float = 0.005
    mean_sep: float = 1.5
    seed: int = 0


@dataclass
class ExperimentConfig:
    """One paper table (or the quick/demo run): data, protocol, models and methods."""

    name: str = "experiment"
    dataset: str = "corafull"  # corafull | cs | computers | reddit | csbm
    data_root: str = "~/.cache/papers/graphs"
    download: bool = False  # let torch_geometric download a missing dataset (needs internet)
    seeds: list[int] = field(default_factory=lambda: [42])
    methods: list[str] = field(default_factory=lambda: ["mecoin"])
    device: str = "auto"
    out_dir: str = "runs/mecoin"
    progress: bool = True
    checkpoint_every_session: bool = True
    legacy: bool = False
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mecoin: MecoinConfig = field(default_factory=MecoinConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    csbm: CSBMConfig = field(default_factory=CSBMConfig)

    def __post_init__(self) -> None:
        for m in self.methods:
            _check_choice("method", m, METHODS)
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.legacy:
            for sub in (self.protocol, self.encoder, self.pretrain, self.mecoin):
                sub.apply_legacy()
