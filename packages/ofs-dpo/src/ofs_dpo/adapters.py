"""LoRA adapter plumbing for two trainable adapters on one frozen base (the paper's fast/slow LoRA modules and COFS combination; plumbing ours).

- :func:`activate_adapter` switches the active adapter the way two trainable adapters need it (ours): PEFT's ``set_adapter``
  freezes every inactive adapter, so both trainable adapters get ``requires_grad=True`` back immediately.
- :func:`make_checkpointing_adapter_aware` fixes a second pitfall of running two adapters in one graph:
  activation (gradient) checkpointing recomputes a layer's forward inside ``backward()``, where PEFT would use
  whatever adapter is active *then*. The wrapper records the active adapter at forward time and re-activates it
  for the recomputation.
- :func:`copy_adapter` / :func:`swap_adapters` implement ``identical_init`` and ``swap_mode="weights"``.
- :func:`combine_lora_state_dicts` / :func:`combine_lora_adapters` implement the COFS combinations in parameter
  space and in exact weight-delta space (not PEFT's ``linear`` merge, which scales A and B by sqrt(w): peft ``src/peft/tuners/lora/model.py:_generalized_task_arithmetic_weighted_adapter``, v0.21).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ofs_dpo.losses import normalise_weights

__all__ = [
    "COMBINE_SPACES",
    "activate_adapter",
    "adapter_parameters",
    "adapter_state_dict",
    "combine_lora_adapters",
    "combine_lora_state_dicts",
    "combined_lora_config",
    "copy_adapter",
    "load_adapter_state_dict",
    "lora_scaling",
    "make_checkpointing_adapter_aware",
    "lowrank_factors",
    "swap_adapters",
]

COMBINE_SPACES = ("param", "delta")


def _peft_model(model: nn.Module):
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a peft.PeftModel, got {type(model).__name__}")
    return model


def adapter_parameters(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """Parameters of one adapter, keyed by their full name (selected by ``.<adapter_name>.``; ours)."""
    tag = f".{adapter_name}."
    out = {n: p for n, p in model.named_parameters() if tag in n}
    if not out:
        raise ValueError(f"adapter {adapter_name!r} has no parameters in this model")
    return out


def _paired(model: nn.Module, src: str, dst: str) -> list[tuple[nn.Parameter, nn.Parameter]]:
    a, b = adapter_parameters(model, src), adapter_parameters(model, dst)
    pairs = []
    for name, p in a.items():
        other = name.replace(f".{src}.", f".{dst}.")
        if other not in b:
            raise ValueError(f"adapter {dst!r} lacks the counterpart of {name}")
        if b[other].shape != p.shape:
            raise ValueError(
                f"shape mismatch between {name} {tuple(p.shape)} and {other} {tuple(b[other].shape)}"
            )
        pairs.append((p, b[other]))
    if len(pairs) != len(b):
        raise ValueError(f"adapters {src!r} and {dst!r} do not have the same parameters")
    return pairs


@torch.no_grad()
def copy_adapter(model: nn.Module, src: str, dst: str) -> None:
    """Copy every tensor of adapter ``src`` into adapter ``dst`` (``identical_init``; ours)."""
    for p_src, p_dst in _paired(model, src, dst):
        p_dst.copy_(p_src)


@torch.no_grad()
def swap_adapters(model: nn.Module, a: str, b: str, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Exchange the tensors of adapters ``a`` and ``b`` and, if given, their optimiser states (``swap_mode="weights"``; ours).

    The exchange is exact (bitwise): parameter data are swapped through a temporary copy and the optimiser's
    per-parameter state dicts (``exp_avg``, ``exp_avg_sq``, ``step`` for Adam) are exchanged as objects.
    """
    opt = getattr(optimizer, "optimizer", optimizer)
    for p_a, p_b in _paired(model, a, b):
        tmp = p_a.detach().clone()
        p_a.copy_(p_b)
        p_b.copy_(tmp)
        if opt is not None:
            sa, sb = opt.state.pop(p_a, None), opt.state.pop(p_b, None)
            if sb is not None:
                opt.state[p_a] = sb
            if sa is not None:
                opt.state[p_b] = sa


def activate_adapter(model: nn.Module, name: str | None, trainable: Sequence[str]) -> None:
    """Make ``name`` the active adapter and keep every adapter in ``trainable`` trainable (ours: PEFT's ``set_adapter`` freezes the inactive adapters).

    ``name=None`` is not accepted here: the reference (adapters disabled) is entered with
    ``model.disable_adapter()`` as trl does, followed by :func:`restore_trainable`.
    """
    model = _peft_model(model)
    if name is None:
        raise ValueError("activate_adapter needs an adapter name")
    if model.active_adapter != name:
        model.set_adapter(name)
    restore_trainable(model, trainable)


def restore_trainable(model: nn.Module, trainable: Sequence[str]) -> None:
    """``set_requires_grad(trainable, True)``: undo PEFT freezing the inactive adapters (ours: PEFT's ``set_adapter`` freezes the inactive adapters)."""
    model.set_requires_grad(list(trainable), True)


def _active_state(model: nn.Module) -> str | None:
    """The adapter a forward would use now: its name, or None when the adapters are disabled."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.base_model.modules():
        if isinstance(module, BaseTunerLayer):
            return None if module.disable_adapters else module.active_adapters[0]
    return model.active_adapter


@contextlib.contextmanager
def _forward_state(model: nn.Module, state: str | None, trainable: Sequence[str]):
    current = _active_state(model)
    if current == state:
        yield
        return
    if state is None:
        with model.disable_adapter():
            yield
        restore_trainable(model, trainable)
        return
    was_disabled = current is None
    if was_disabled:
        model.base_model.enable_adapter_layers()
    activate_adapter(model, state, trainable)
    try:
        yield
    finally:
        if was_disabled:
            model.base_model.disable_adapter_layers()
        else:
            activate_adapter(model, current, trainable)
        restore_trainable(model, trainable)


def make_checkpointing_adapter_aware(model: nn.Module, trainable: Sequence[str]) -> int:
    """Wrap every activation-checkpointing function in ``model`` so recomputation uses the forward's adapter.

    Idempotent; returns the number of modules newly wrapped. Works for reentrant and non-reentrant
    ``torch.utils.checkpoint`` because the wrapped *function* (called in forward and again in recompute)
    restores the adapter that was active when the forward ran.
    """
    peft_model = _peft_model(model)
    trainable = tuple(trainable)
    wrapped = 0
    for module in peft_model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or getattr(func, "_ofs_adapter_aware", False):
            continue

        def aware(function, *args, _inner=func, **kwargs):
            state = _active_state(peft_model)

            def run(*a, **k):
                with _forward_state(peft_model, state, trainable):
                    return function(*a, **k)

            return _inner(run, *args, **kwargs)

        aware._ofs_adapter_aware = True
        module._gradient_checkpointing_func = aware
        wrapped += 1
    return wrapped


# ---------------------------------------------------------------------------------------------------------------
# State dicts and combinations (COFS-DPO: arXiv 2406.05534 abstract, linear combination of fast modules)
# ---------------------------------------------------------------------------------------------------------------


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """CPU copy of one adapter's PEFT state dict (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    model = _peft_model(model)
    if adapter_name not in model.peft_config:
        raise ValueError(f"unknown adapter {adapter_name!r}; have {sorted(model.peft_config)}")
    sd = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


def load_adapter_state_dict(model: nn.Module, adapter_name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` (from :func:`adapter_state_dict`) into an existing adapter; every key must match."""
    from peft import set_peft_model_state_dict

    model = _peft_model(model)
    if adapter_name not in model.peft_config:
        raise ValueError(f"unknown adapter {adapter_name!r}; have {sorted(model.peft_config)}")
    expected = adapter_state_dict(model, adapter_name)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit adapter {adapter_name!r}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for k, v in state_dict.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(expected[k].shape)}")
    set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)


def read_adapter_folder(path: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(LoraConfig, state dict)`` of a PEFT adapter, read without unpickling anything.

    ``path`` is an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, what
    :meth:`~ofs_dpo.OFSDPOTrainer.export_leader` and PEFT's ``save_pretrained`` write) or the weights file itself,
    with ``adapter_config.json`` beside it. A pickled ``adapter_model.bin`` / ``.pt`` is read with
    ``weights_only=True``; a damaged or refused file raises :class:`~papers_shared.errors.CheckpointError` naming
    it (ours).
    """
    import json

    from peft import LoraConfig

    from papers_shared.checkpoints import load_checkpoint, load_safetensors
    from papers_shared.errors import CheckpointError

    path = Path(path)
    if path.is_file():
        folder, weights = path.parent, path
    else:
        folder = path
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file() and (folder / "adapter_model.bin").is_file():
            weights = folder / "adapter_model.bin"
        if not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no PEFT adapter at {folder}: expected adapter_config.json in it")
        if not weights.is_file():
            raise FileNotFoundError(f"no adapter weights in {folder}: expected {weights.name}")
    if weights.suffix == ".safetensors":
        state, _ = load_safetensors(weights)
    else:
        state = load_checkpoint(weights)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{weights} does not hold a tensor state dict")
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {cfg_path.name} beside {weights}: an adapter needs its config")
    try:
        raw = json.loads(cfg_path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        config = LoraConfig(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"could not read adapter config {cfg_path}: {exc}") from None
    return config, state


def lora_scaling(config: Any) -> float:
    """LoRA scaling ``s = alpha / r`` (``alpha / √r`` with rsLoRA)."""
    r = config.r
    return config.lora_alpha / (math.sqrt(r) if getattr(config, "use_rslora", False) else r)


def _check_plain_lora(config: Any) -> None:
    from peft import LoraConfig

    if not isinstance(config, LoraConfig):
        raise TypeError(f"combination needs LoraConfig adapters, got {type(config).__name__}")
    if config.use_dora or getattr(config, "lora_bias", False):
        raise ValueError("combination supports plain LoRA only (no DoRA, no lora_bias)")
    if config.rank_pattern or config.alpha_pattern:
        raise ValueError(
            "combination needs a uniform rank/alpha (rank_pattern/alpha_pattern are not supported)"
        )


def _is_a(key: str) -> bool:
    return "lora_A" in key or "lora_embedding_A" in key


def _is_b(key: str) -> bool:
    return "lora_B" in key or "lora_embedding_B" in key


def combine_lora_state_dicts(
    state_dicts: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float],
    space: str = "param",
    scalings: Sequence[float] | None = None,
    new_scaling: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Linear combination of LoRA adapters given as state dicts (COFS-DPO's linear combination; the two spaces are ours).

    - ``space="param"``: ``A = Σ w_i A_i``, ``B = Σ w_i B_i`` per layer (same rank and scaling required).
    - ``space="delta"``: exact ``ΔW = Σ w_i s_i B_i A_i`` as one adapter of rank ``Σ r_i`` with scaling
      ``new_scaling``: ``A = [w_1 s_1/s A_1; …]``, ``B = [B_1, …]`` (PEFT's ``cat`` construction).

    ``weights`` are used as given (no renormalisation) so that callers can build any combination.
    """
    if not state_dicts:
        raise ValueError("need at least one state dict to combine")
    if len(weights) != len(state_dicts):
        raise ValueError(f"{len(weights)} weights for {len(state_dicts)} adapters")
    if space not in COMBINE_SPACES:
        raise ValueError(f"space must be one of {list(COMBINE_SPACES)}, got {space!r}")
    keys = set(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != keys:
            raise ValueError(f"adapter {i} has different keys than adapter 0")
    w = [float(x) for x in weights]
    if any(not math.isfinite(x) for x in w):
        raise ValueError(f"combination weights must be finite, got {w}")
    out: dict[str, torch.Tensor] = {}
    if space == "param":
        if scalings is not None and len({round(s, 12) for s in scalings}) > 1:
            raise ValueError("space='param' needs adapters with the same LoRA scaling (alpha/r)")
        for k in sorted(keys):
            shapes = {tuple(sd[k].shape) for sd in state_dicts}
            if len(shapes) > 1:
                raise ValueError(
                    f"space='param' needs equal shapes (same rank); {k} has shapes {sorted(shapes)}"
                )
            out[k] = sum(wi * sd[k].float() for wi, sd in zip(w, state_dicts)).to(state_dicts[0][k].dtype)
        return out
    s = list(scalings) if scalings is not None else [1.0] * len(state_dicts)
    if len(s) != len(state_dicts):
        raise ValueError(f"{len(s)} scalings for {len(state_dicts)} adapters")
    for k in sorted(keys):
        if _is_a(k):
            parts = [sd[k].float() * (wi * si / new_scaling) for wi, si, sd in zip(w, s, state_dicts)]
            out[k] = torch.cat(parts, dim=0).to(state_dicts[0][k].dtype)
        elif _is_b(k):
            out[k] = torch.cat([sd[k] for sd in state_dicts], dim=1)
        else:
            raise ValueError(f"space='delta' cannot combine non-LoRA tensor {k}")
    return out


def combined_lora_config(configs: Sequence[Any], space: str) -> Any:
    """LoraConfig of the combined adapter: the same config for ``param``; rank ``Σ r_i`` and scaling 1 for ``delta``."""
    for c in configs:
        _check_plain_lora(c)
    first = configs[0]
    if space == "param":
        if any(c.r != first.r or lora_scaling(c) != lora_scaling(first) for c in configs):
            raise ValueError("space='param' needs adapters with the same rank and scaling")
        return replace(first)
    r = sum(c.r for c in configs)
    alpha = math.sqrt(r) if first.use_rslora else float(r)
    return replace(first, r=r, lora_alpha=alpha, rank_pattern={}, alpha_pattern={})


def combine_lora_adapters(
    peft_model: nn.Module,
    adapter_names: Sequence[str],
    weights: Sequence[float],
    new_name: str,
    space: str = "param",
    normalise: bool = True,
) -> str:
    """Add adapter ``new_name`` = linear combination of loaded adapters (COFS-DPO's linear combination; API ours).

    ``space="param"`` averages the LoRA factors; ``space="delta"`` builds the exact weight-space combination
    ``ΔW = Σ w_i ΔW_i`` (rank ``Σ r_i``). Unlike ``add_weighted_adapter(combination_type="linear")``, neither
    scales A and B by ``√w``. With ``normalise=True`` the weights are checked (>= 0) and rescaled to sum to 1.
    The new adapter is frozen and not activated. Returns ``new_name``.
    """
    model = _peft_model(peft_model)
    names = list(adapter_names)
    if not names:
        raise ValueError("adapter_names is empty")
    for n in names:
        if n not in model.peft_config:
            raise ValueError(f"unknown adapter {n!r}; have {sorted(model.peft_config)}")
    if new_name in model.peft_config:
        raise ValueError(f"adapter {new_name!r} already exists")
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} adapters")
    w = normalise_weights(weights) if normalise else [float(x) for x in weights]
    configs = [model.peft_config[n] for n in names]
    config = combined_lora_config(configs, space)
    sds = [adapter_state_dict(model, n) for n in names]
    combined = combine_lora_state_dicts(
        sds, w, space=space, scalings=[lora_scaling(c) for c in configs], new_scaling=lora_scaling(config)
    )
    active = model.active_adapter
    trainable = [
        n for n in model.peft_config if any(p.requires_grad for p in adapter_parameters(model, n).values())
    ]
    model.add_adapter(new_name, config)
    load_adapter_state_dict(model, new_name, combined)
    if model.active_adapter != active:
        model.set_adapter(active)
    for p in adapter_parameters(model, new_name).values():
        p.requires_grad_(False)
    if trainable:
        restore_trainable(model, trainable)
    return new_name


def lowrank_factors(
    state_dict: dict[str, torch.Tensor], rank: int, scaling: float, target_scaling: float
) -> dict[str, torch.Tensor]:
    """Best rank-``rank`` LoRA factors of a (possibly higher-rank) adapter's per-layer ``s·B A`` (truncated SVD).

    Used to warm-start rank-r adapters from a ``delta``-space combination (COFS ``init_from="previous"``).
    Returned factors reproduce ``U_r S_r V_r^T`` at scaling ``target_scaling``.
    """
    out: dict[str, torch.Tensor] = {}
    a_keys = sorted(k for k in state_dict if _is_a(k))
    for ka in a_keys:
        kb = ka.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")
        if kb not in state_dict:
            raise ValueError(f"{ka} has no matching B factor")
        a, b = state_dict[ka].float(), state_dict[kb].float()
        shape_a, shape_b = a.shape, b.shape
        delta = scaling * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt() / math.sqrt(target_scaling)
        new_b = torch.zeros(shape_b[0], rank)
        new_a = torch.zeros(rank, delta.shape[1])
        new_b[:, :k] = u[:, :k] * root
        new_a[:k] = root[:, None] * vh[:k]
        out[ka] = new_a.reshape(rank, *shape_a[1:]).to(state_dict[ka].dtype)
        out[kb] = new_b.reshape(shape_b[0], rank, *shape_b[2:]).to(state_dict[kb].dtype)
    leftover = set(state_dict) - set(out)
    if leftover:
        raise ValueError(f"cannot factorise non-LoRA tensors {sorted(leftover)[:3]}")
    return out
