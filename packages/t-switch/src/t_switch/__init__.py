"""T-Switch / Auto-Switch: binary task switches for model merging (Qi et al., CVPR 2025, arXiv 2412.00054).

A task vector is stored as an activation switch (mask), a polarity switch (signs) and a scaling knob (one
scalar per tensor): :func:`task_vector`, :func:`drop_by_sign`, :class:`BinarySwitch`, the bit format
(:func:`pack_ternary` / :func:`unpack_ternary`), switch files (:func:`save_switches` / :func:`load_switches`,
safetensors), :func:`storage_report`; switch combination (:class:`TaskSwitchBank`, :class:`SwitchedModel`);
Auto-Switch (:class:`KNNRouter`, :class:`AutoSwitch`); the baselines of :mod:`t_switch.baselines`; the
pulse curve (:func:`drop_sweep`); and one table driver (:func:`t_switch.experiment.run_merging`).
"""

from t_switch.analysis import conflict_statistics, drop_sweep, pulse_point
from t_switch.auto_switch import AutoSwitch, routing_report, select_router
from t_switch.bank import SwitchedModel, TaskSwitchBank, lora_zero_base
from t_switch.baselines import BASELINES, MergeResult, get_method
from t_switch.evaluate import evaluate_auto_switch, evaluate_merge, evaluate_switched, run_params
from t_switch.packing import PackedTensor, pack_ternary, ternary_bits, unpack_ternary
from t_switch.router import KNNRouter, collect_query_features
from t_switch.sparsify import drop_by_sign, drop_global, drop_tensor_by_sign
from t_switch.storage import SwitchFile, compress_files, load_switches, save_switches, storage_report
from t_switch.switch import BinarySwitch, binarize, compress_task_vector
from t_switch.task_vector import (
    TaskVector,
    UnexpectedKeysWarning,
    load_task_vector,
    lora_task_vector,
    save_task_vector,
    task_vector,
)

__all__ = [
    "BASELINES",
    "AutoSwitch",
    "BinarySwitch",
    "KNNRouter",
    "MergeResult",
    "PackedTensor",
    "SwitchFile",
    "SwitchedModel",
    "TaskSwitchBank",
    "TaskVector",
    "UnexpectedKeysWarning",
    "binarize",
    "collect_query_features",
    "compress_files",
    "compress_task_vector",
    "conflict_statistics",
    "drop_by_sign",
    "drop_global",
    "drop_sweep",
    "drop_tensor_by_sign",
    "evaluate_auto_switch",
    "evaluate_merge",
    "evaluate_switched",
    "get_method",
    "load_switches",
    "load_task_vector",
    "lora_task_vector",
    "lora_zero_base",
    "pack_ternary",
    "pulse_point",
    "routing_report",
    "run_params",
    "save_switches",
    "save_task_vector",
    "select_router",
    "storage_report",
    "task_vector",
    "ternary_bits",
    "unpack_ternary",
]

__version__ = "0.1.0"
