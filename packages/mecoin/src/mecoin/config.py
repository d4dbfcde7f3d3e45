"""Typed configs, validated when built (:class:`papers_shared.config.Config`).

Defaults are those of the official code (Arvin0313/Mecoin-GFSCIL, commit b8a41c4: ``train.py`` argument
parser and ``test.sh``); choices of our own are fields marked "(ours)"; quirks of the official code are
``legacy_*`` fields, all switched on at once by ``legacy=True`` (which also sets ``vote_scale=3``,
``mask_unseen=False``, ``renormalize_masked=False`` and ``restore_head=False``, as in the official code).

Layout of an experiment file (``configs/*.yaml``)::

    name, dataset, data_root, seeds, methods, device, out_dir, legacy
    protocol:  session protocol shared by every method
    encoder:   GNN backbone
    pretrain:  base-session pre-training
    mecoin:    the method
    baselines: the baselines
    csbm:      the synthetic graph of the quick run (``dataset: csbm``)

Cross-field rules (checked when the config is built): the graph must have more classes than the base
session plus the requested sessions ("a 12-class graph cannot have 20 base classes"), the MRaM width
``mecoin.num_classes`` (when set) must cover every class, and a synthetic class must have more nodes than
the shots it gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from papers_shared.config import Config, ConfigError, field

__all__ = [
    "ABLATIONS",
    "DATASET_DEFAULTS",
    "DISTILL_MODES",
    "METHODS",
    "BaselineConfig",
    "CSBMConfig",
    "EncoderConfig",
    "ExperimentConfig",
    "MecoinConfig",
    "PretrainConfig",
    "ProtocolConfig",
]

Distill = Literal["bidirectional", "gnn_to_mram", "mram_to_gnn", "none"]
Method = Literal[
    "mecoin", "finetune", "finetune_last", "joint", "probe", "ncm", "teen", "ewc", "lwf", "ergnn"
]
Dataset = Literal["corafull", "cs", "computers", "reddit", "csbm"]
DISTILL_MODES: tuple[str, ...] = Distill.__args__
METHODS: tuple[str, ...] = Method.__args__

#: Base classes (the official ``pretrain.py`` takes the largest classes), ways per session and K_tot of the
#: real graphs (PyG statistics). Computers' one-way sessions and CS's two-way sessions are (ours): the
#: official repository only ships the CoraFull recipe (``test.sh``).
DATASET_DEFAULTS = {
    "corafull": {"base_classes": 50, "ways": 2, "num_classes": 70},
    "cs": {"base_classes": 5, "ways": 2, "num_classes": 15},
    "computers": {"base_classes": 5, "ways": 1, "num_classes": 10},
    "reddit": {"base_classes": 24, "ways": 2, "num_classes": 41},
}

#: Variants of ``mecoin ablate``: name -> MecoinConfig overrides. The first four are the paper's ablation
#: figure (No Inter, No GraphInfo, No MeCs; our definitions, the paper names them only); the ``distill_*``
#: ones its distillation-direction study; the last two our readings of the paper's wording (real
#: node-to-prototype cross attention; one key per class).
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


@dataclass
class _LegacySection(Config):
    """A config section whose ``legacy=True`` switches on the official-code quirks listed in ``LEGACY``."""

    LEGACY: ClassVar[dict[str, object]] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.legacy:
            self.apply_legacy()

    def apply_legacy(self) -> None:
        """Switch on every official quirk of this section."""
        self.legacy = True
        for key, value in self.LEGACY.items():
            setattr(self, key, value)


@dataclass
class MecoinConfig(_LegacySection):
    """Mecoin hyper-parameters (official ``train.py`` defaults; ``num_classes=0`` takes K_tot from the data)."""

    num_classes: int = field(0, ge=0, help="MRaM width K_tot; 0 = the number of classes of the graph")
    # MeCo
    num_codebooks: int = field(100, ge=1, help="codebooks C (official --num_books)")
    keys_per_codebook: int = field(800, ge=1, help="keys per codebook P (official --num_pairs)")
    proj_dim: int = field(13, ge=1, help="Gaussian random projection dims d_p (official: 13, hard-coded)")
    use_graphinfo: bool = field(True, help="prepend the GraphInfo scalar to each query (d_k = d_p + 1)")
    use_interaction: bool = field(True, help="pass queries through the MeCo interaction block")
    interaction: Literal["legacy_codebook", "cross"] = field(
        "legacy_codebook",
        help="legacy_codebook: attention across codebooks as the official code; cross (ours): each "
        "query attends over its codebook's keys",
    )
    graphinfo_heads: int = field(2, ge=1, help="attention heads of GraphInfo")
    interaction_heads: int = field(2, ge=1, help="attention heads of the MeCo interaction")
    attn_dropout: float = field(0.5, ge=0.0, lt=1.0, help="dropout of GraphInfo and the interaction")
    graphinfo_batch: Literal["set", "chunk"] = field(
        "set", help="set: GraphInfo attends over the whole node set (official); chunk (ours): bounded memory"
    )
    graphinfo_chunk: int = field(4096, ge=1, help="nodes per GraphInfo chunk with graphinfo_batch=chunk")
    # SMU and the class-key reading
    memory_layout: Literal["codebook", "class"] = field(
        "codebook", help="codebook: C x P k-means keys (official); class (ours): one key per class"
    )
    ema_decay: float = field(0.95, ge=0.0, lt=1.0, help="EMA decay of the key construction")
    laplace_eps: float = field(1e-5, gt=0.0, help="Laplace smoothing of the key counts")
    dead_threshold_factor: float = field(
        0.1, ge=0.0, help="dead-key threshold = factor * num_nodes / P (official --threshold_factor)"
    )
    construct_passes: int = field(1, ge=1, help="key-construction passes (official --init_epochs)")
    construct_train_mode: bool = field(
        False, help="dropout on during key construction (the official code leaves train mode on)"
    )
    class_key_ema: bool = field(False, help="class layout (ours): EMA-update a key when its class reappears")
    # MRaM
    values_init: Literal["zeros", "rand", "randn"] = field("zeros", help="MRaM value initialisation")
    vote_scale: float = field(
        1.0, gt=0.0, help="readout scale (official code: 3, from a top-3 weight vector)"
    )
    mram_optimizer: Literal["adam", "sparse_adam"] = field(
        "adam", help="adam (official) or sparse_adam (ours: only retrieved rows and their moments move)"
    )
    # GNN head and GKIM
    head_hidden: int = field(64, ge=1, help="hidden width of the GNN head (official MLP: 64)")
    head_dropout: float = field(0.5, ge=0.0, lt=1.0, help="input dropout of the GNN head")
    distill: Distill = field("bidirectional", help="GKIM distillation direction (official: bidirectional)")
    kl_weight: float = field(0.5, ge=0.0, help="weight of each KL direction")
    ce_weight: float = field(1.0, ge=0.0, help="weight of the label-smoothed cross-entropy")
    temperature: float = field(1.0, gt=0.0, help="distillation temperature T")
    label_smoothing: float = field(0.1, ge=0.0, lt=1.0, help="label smoothing of the cross-entropy")
    # Training
    lr: float = field(5e-4, gt=0.0, help="Adam learning rate of MRaM and the head (official: 5e-4)")
    weight_decay: float = field(0.0, ge=0.0, help="Adam weight decay")
    epochs_per_session: int = field(2000, ge=1, help="full-batch epochs per session (official --cl_epochs)")
    grad_clip: float = field(1.0, ge=0.0, help="max grad-norm of the Mecoin parameters (0 = no clipping)")
    replay_supports: bool = field(
        True, help="train on the supports of every session so far (official); false: current only"
    )
    restore_head: bool = field(
        True, help="restore the head with the best MRaM state (ours; the official code restores MRaM only)"
    )
    query_chunk: int = field(0, ge=0, help="nodes per retrieval chunk; 0 = automatic (bounded memory)")
    # Official-code quirks
    legacy_mode_schedule: bool = field(
        False, help="official train/eval flips: train mode only at epochs 0, 1, 101, 201, ..."
    )
    legacy_shuffle_bug: bool = field(False, help="official: keys fitted on row-shuffled features")
    legacy: bool = field(False, help="switch on every official-code quirk of the method")
    seed: int = field(42, help="seed of the random projection and the keys (set per run by the runner)")

    LEGACY: ClassVar[dict[str, object]] = {
        "legacy_mode_schedule": True,
        "legacy_shuffle_bug": True,
        "construct_train_mode": True,
        "restore_head": False,
        "vote_scale": 3.0,
    }

    @property
    def key_dim(self) -> int:
        """``d_k = d_p + 1`` with the GraphInfo scalar, else ``d_p``."""
        return self.proj_dim + (1 if self.use_graphinfo else 0)


@dataclass
class ProtocolConfig(_LegacySection):
    """Session protocol shared by every method."""

    base_classes: int = field(50, ge=1, help="base classes (the largest ones by node count)")
    ways: int = field(2, ge=1, help="novel classes per session (official --split_size)")
    shots: int = field(5, ge=1, help="labelled nodes per novel class")
    val_frac: float = field(0.2, ge=0.0, lt=1.0, help="share of a novel class's nodes cut for validation")
    num_sessions: int | None = field(
        None, ge=1, help="incremental sessions; null = as many as the classes allow"
    )
    mask_unseen: bool = field(
        True, help="predict among seen classes only (ours; the official code scores all K_tot outputs)"
    )
    renormalize_masked: bool = field(
        True, help="renormalise the session graph (ours; the official code reuses full-graph weights)"
    )
    select_best_val: bool = field(
        True,
        help="keep each session's best-validation state (official for Mecoin; applied to every "
        "trained method except finetune_last)",
    )
    legacy_split: bool = field(False, help="official split with duplicated node lists (test leak)")
    legacy_group_eval: bool = field(False, help="official per-group batches for the accuracy matrix")
    legacy: bool = field(False, help="switch on every official-code quirk of the protocol")

    LEGACY: ClassVar[dict[str, object]] = {
        "legacy_split": True,
        "legacy_group_eval": True,
        "mask_unseen": False,
        "renormalize_masked": False,
    }


@dataclass
class EncoderConfig(_LegacySection):
    """GNN backbone (official ``backbone/model.py``)."""

    backbone: str = field(
        "gcn",
        help="gcn (official), gat (official), or any torch_geometric.nn conv class name (SAGEConv, ...)",
    )
    hidden: int = field(128, ge=1, help="encoder width h (official runs: 128)")
    dropout: float = field(0.5, ge=0.0, lt=1.0, help="encoder dropout")
    heads: int = field(8, ge=1, help="GAT heads of the first layer")
    negative_slope: float = field(0.2, ge=0.0, help="GAT LeakyReLU slope")
    legacy_gat_logsoftmax: bool = field(False, help="official GAT: log_softmax over the feature dims")
    legacy: bool = field(False, help="switch on every official-code quirk of the encoder")

    LEGACY: ClassVar[dict[str, object]] = {"legacy_gat_logsoftmax": True}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.backbone.strip():
            raise ConfigError("encoder.backbone is empty: give gcn, gat or a torch_geometric conv class name")


@dataclass
class PretrainConfig(_LegacySection):
    """Base-session pre-training (official ``pretrain.py``): Adam, NLL, early stopping on base validation."""

    lr: float = field(5e-3, gt=0.0, help="Adam learning rate")
    weight_decay: float = field(5e-4, ge=0.0, help="Adam weight decay")
    max_epochs: int = field(2000, ge=1, help="maximum full-batch epochs")
    eval_every: int = field(10, ge=1, help="validate every this many epochs")
    patience: int = field(10, ge=0, help="stop after more than this many validations without improvement")
    legacy_no_zero_grad: bool = field(False, help="official: the classifier's gradients accumulate")
    legacy: bool = field(False, help="switch on every official-code quirk of pre-training")

    LEGACY: ClassVar[dict[str, object]] = {"legacy_no_zero_grad": True}


@dataclass
class BaselineConfig(Config):
    """Baselines (our defaults; the official repository ships none)."""

    lr: float = field(5e-3, gt=0.0, help="Adam learning rate of the trained baselines")
    weight_decay: float = field(5e-4, ge=0.0, help="Adam weight decay of the trained baselines")
    epochs: int = field(200, ge=1, help="full-batch epochs per session")
    finetune_encoder: bool = field(True, help="train encoder + classifier (true) or the classifier alone")
    train_base_session: bool = field(False, help="retrain in session 0 (false: the pre-trained model)")
    joint_balanced: bool = field(
        True, help="joint (ours): class-balanced cross-entropy (5-shot novel classes weigh as much as base)"
    )
    ewc_lambda: float = field(10000.0, ge=0.0, help="EWC penalty weight")
    lwf_lambda: float = field(1.0, ge=0.0, help="LwF distillation weight")
    lwf_temperature: float = field(2.0, gt=0.0, help="LwF temperature")
    er_per_class: int = field(2, ge=1, help="ER-GNN replayed nodes per old class")
    ncm_temperature: float = field(16.0, gt=0.0, help="cosine-classifier temperature of NCM/TEEN")
    teen_tau: float = field(16.0, gt=0.0, help="TEEN calibration temperature")
    teen_weight: float = field(0.1, ge=0.0, le=1.0, help="TEEN calibration weight")
    probe_epochs: int = field(300, ge=1, help="linear probe: full-batch Adam epochs")
    probe_lr: float = field(0.05, gt=0.0, help="linear probe: Adam learning rate")
    probe_folds: int = field(
        2, ge=2, help="linear probe: test nodes are scored by a probe fitted on the others"
    )


@dataclass
class CSBMConfig(Config):
    """Synthetic contextual SBM (``papers_shared.data.graph.make_csbm_graph``)."""

    num_classes: int = field(12, ge=2, help="classes")
    nodes_per_class: int = field(80, ge=2, help="nodes per class")
    feat_dim: int = field(32, ge=1, help="feature dims (features = class mean + N(0, I))")
    p_in: float = field(0.05, ge=0.0, le=1.0, help="edge probability within a class")
    p_out: float = field(0.005, ge=0.0, le=1.0, help="edge probability across classes")
    mean_sep: float = field(1.5, ge=0.0, help="norm of the class means")
    seed: int = field(0, help="graph seed (the graph depends on it alone)")


@dataclass
class ExperimentConfig(Config):
    """One paper table (or the quick/demo run): data, protocol, models and methods."""

    name: str = field("experiment", help="run name: results go to <out_dir>/<name>/")
    dataset: Dataset = field("corafull", help="graph to run on (csbm = the synthetic quick-run graph)")
    data_root: str = field("~/.cache/papers/graphs", help="folder of the PyG datasets")
    download: bool = field(False, help="let torch_geometric download a missing dataset (needs internet)")
    seeds: list[int] = field(default_factory=lambda: [42], ge=0, help="one run per seed (split and model)")
    methods: list[Method] = field(default_factory=lambda: ["mecoin"], help="methods to run, in order")
    device: str = field("auto", help="auto, cpu, cuda, cuda:1, ...")
    out_dir: str = field("runs/mecoin", help="output folder")
    progress: bool = field(True, help="progress bars")
    checkpoint_every_session: bool = field(True, help="write a resumable checkpoint after every session")
    legacy: bool = field(False, help="every official-code quirk in every section")
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig, help="session protocol")
    encoder: EncoderConfig = field(default_factory=EncoderConfig, help="GNN encoder")
    pretrain: PretrainConfig = field(default_factory=PretrainConfig, help="base-session pre-training")
    mecoin: MecoinConfig = field(default_factory=MecoinConfig, help="Mecoin")
    baselines: BaselineConfig = field(default_factory=BaselineConfig, help="baselines")
    csbm: CSBMConfig = field(default_factory=CSBMConfig, help="synthetic graph (dataset: csbm)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods {bad} are not among {list(METHODS)}")
        if not self.methods:
            raise ConfigError("methods must name at least one method")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {self.seeds} repeat a seed")
        self._check_classes()
        if self.legacy:
            for sub in (self.protocol, self.encoder, self.pretrain, self.mecoin):
                sub.apply_legacy()

    def num_classes(self) -> int:
        """Classes of the configured graph (K_tot)."""
        if self.dataset == "csbm":
            return self.csbm.num_classes
        return DATASET_DEFAULTS[self.dataset]["num_classes"]

    def _check_classes(self) -> None:
        k, p = self.num_classes(), self.protocol
        what = f"a {k}-class graph ({self.dataset})"
        if p.base_classes >= k:
            raise ConfigError(
                f"{what} cannot have {p.base_classes} base classes: protocol.base_classes must leave at "
                "least one novel session"
            )
        novel = k - p.base_classes
        if p.ways > novel:
            raise ConfigError(
                f"{what} with {p.base_classes} base classes has {novel} novel classes, fewer than "
                f"protocol.ways={p.ways}"
            )
        if p.num_sessions is not None and p.num_sessions * p.ways > novel:
            raise ConfigError(
                f"{what} with {p.base_classes} base classes has {novel} novel classes: not enough for "
                f"protocol.num_sessions={p.num_sessions} sessions of {p.ways} ways"
            )
        if self.mecoin.num_classes and self.mecoin.num_classes < k:
            raise ConfigError(
                f"mecoin.num_classes={self.mecoin.num_classes} is smaller than the {k} classes of "
                f"{self.dataset}; set it to 0 (automatic) or >= {k}"
            )
        if self.dataset == "csbm":
            n = self.csbm.nodes_per_class
            if n <= p.shots or int(0.6 * n) < p.shots:
                raise ConfigError(
                    f"csbm.nodes_per_class={n} is too small for protocol.shots={p.shots} (a class needs more "
                    "nodes than shots, and 60% of a base class must hold the shots)"
                )
