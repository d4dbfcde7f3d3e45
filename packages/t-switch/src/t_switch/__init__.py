"""T-Switch / Auto-Switch: binary task switches for model merging (Qi et al., CVPR 2025).

Core API (spec §7): :func:`task_vector`, :func:`drop_by_sign`, :class:`BinarySwitch`,
:func:`pack_ternary` / :func:`unpack_ternary`, :func:`save_switches` / :func:`load_switches`,
:func:`storage_report`, :class:`TaskSwitchBank`, :class:`SwitchedModel`, :class:`KNNRouter`,
:class:`AutoSwitch`, the baselines of :mod:`t_switch.baselines` and :func:`drop_sweep`.
"""

from t_switch.analysis import conflict_statistics, drop_sweep
from t_switch.baselines import BASELINES, MergeResult, get_method
from t_switch.evaluate import evaluate_auto_switch, evaluate_merge, evaluate_switched, run_params
from t_switch.merge import AutoSwitch, SwitchedModel, TaskSwitchBank, lora_zero_base
from t_switch.packing import PackedTensor, pack_ternary, ternary_bits, unpack_ternary
from t_switch.router import KNNRouter, collect_query_features
from t_switch.sparsify import drop_by_sign, drop_global, drop_tensor_by_sign
from t_switch.storage import SwitchFile, load_switches, save_switches, storage_report
from t_switch.switch import BinarySwitch, binarize, compress_task_vector
from t_switch.task_vector import TaskVector, lora_task_vector, task_vector

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
    "binarize",
    "collect_query_features",
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
    "lora_task_vector",
    "lora_zero_base",
    "pack_ternary",
    "run_params",
    "save_switches",
    "storage_report",
    "task_vector",
    "ternary_bits",
    "unpack_ternary",
]

__version__ = "0.1.0"
