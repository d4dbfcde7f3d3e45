"""Switch combination: the switch bank and switched models.

``theta(w) = theta_0 + sum_k w_k * tau^_k`` (paper: a model for any switch combination; official
``merge_vit/merge_vit.py:add_weighted_specific_task_vectors`` at 68bfda8): T-Switch is ``w = e_k``;
Auto-Switch chooses ``w`` by retrieval (:mod:`t_switch.auto_switch`). The bank keeps ``theta_0`` *by reference* (the module's own tensors,
never copied) and every task's switches; :class:`SwitchedModel` runs the unchanged module with the
assembled tensors through :func:`torch.func.functional_call` (no deep copies, the module is never
mutated, so calling the module directly still gives the pre-trained model). Assembled parameter sets
are cached (LRU on the weight vector): a run of batches routed to the same combination, or T-Switch
evaluation of one task, assembles once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from t_switch.switch import BinarySwitch
from t_switch.task_vector import StateLike, state_dict_of

__all__ = ["SwitchedModel", "TaskSwitchBank", "lora_zero_base", "output_tensor"]

LORA_MIX = ("factors", "product")


class TaskSwitchBank:
    """``theta_0`` once plus the :class:`BinarySwitch` of every task.

    Args:
        pretrained: the pre-trained module (its tensors are referenced) or a state dict.
        switches: ``task -> BinarySwitch`` (the order fixes the index of each task in ``w``).
        cache_size: number of assembled parameter sets kept (0 disables the cache).
        lora_mix: ``"factors"`` (official ``merge_vit/merge_vit_lora.py:add_weighted_specific_task_vectors_lora``: ``A(w) = sum w_k A^_k``, ``B(w) = sum w_k B^_k``) or
            ``"product"`` (``sum_k w_k B^_k A^_k``, assembled as one LoRA of rank ``K r`` by
            concatenating ``[w_k B^_k]`` and ``[A^_k]``). Only matters for ``lora_A``/``lora_B`` tensors.
    """

    def __init__(
        self,
        pretrained: StateLike,
        switches: Mapping[str, BinarySwitch],
        cache_size: int = 2,
        lora_mix: str = "factors",
    ) -> None:
        if not switches:
            raise ValueError("a switch bank needs at least one task")
        if lora_mix not in LORA_MIX:
            raise ValueError(f"lora_mix must be one of {LORA_MIX}, got {lora_mix!r}")
        self.base = state_dict_of(pretrained, include_buffers=True)
        self.switches = dict(switches)
        self.tasks = list(self.switches)
        self.cache_size = int(cache_size)
        self.lora_mix = lora_mix
        self._cache: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()
        self._resident: dict[tuple, Tensor] = {}
        names: dict[str, None] = {}
        for task, sw in self.switches.items():
            for n in sw.names:
                if n not in self.base:
                    raise KeyError(f"switch tensor {n!r} of task {task!r} is not in the pre-trained weights")
                shape = sw.signs[n].shape if n in sw.signs else sw.passthrough[n].shape
                if tuple(shape) != tuple(self.base[n].shape):
                    raise ValueError(
                        f"switch tensor {n!r} of task {task!r} has shape {tuple(shape)}, "
                        f"pre-trained {tuple(self.base[n].shape)}"
                    )
                names[n] = None
        self.names = list(names)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def weight_vector(self, weights: Tensor | Mapping[str, float] | Sequence[float] | str) -> Tensor:
        """Normalise ``weights`` (a task name = one-hot, a mapping task -> w, or ``[K]``) to ``[K]``."""
        K = self.num_tasks
        if isinstance(weights, str):
            if weights not in self.switches:
                raise KeyError(f"unknown task {weights!r}; tasks: {self.tasks}")
            w = torch.zeros(K)
            w[self.tasks.index(weights)] = 1.0
            return w
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.tasks))
            if unknown:
                raise KeyError(f"unknown task(s) {unknown}; tasks: {self.tasks}")
            return torch.tensor([float(weights.get(t, 0.0)) for t in self.tasks])
        w = torch.as_tensor(weights, dtype=torch.float32).detach().cpu()
        if w.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights contain NaN or inf")
        return w

    def _sum(self, name: str, w: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        acc = None
        for k, task in enumerate(self.tasks):
            c = float(w[k])
            if c == 0.0:
                continue
            sw = self.switches[task]
            if name in sw.signs:
                coef = c * sw.scales[name]
                if coef == 0.0:
                    continue
                term = self._signs_on(task, name, device).to(dtype)
            elif name in sw.passthrough:
                coef, term = c, sw.passthrough[name].to(device=device, dtype=dtype)
            else:
                continue  # skipped (all-zero) tensor of this task
            acc = term * coef if acc is None else acc.add_(term, alpha=coef)  # never mutate stored tensors
        return acc

    def _signs_on(self, task: str, name: str, device: torch.device) -> Tensor:
        """The int8 signs of one tensor on ``device``, copied there once (host-to-device copies of every
        switch per batch would cost more than the forward pass on a GPU)."""
        s = self.switches[task].signs[name]
        if s.device == device:
            return s
        key = (task, name, str(device))
        if key not in self._resident:
            self._resident[key] = s.to(device)
        return self._resident[key]

    def delta(self, weights, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """``sum_k w_k tau^_k`` per tensor (the switch combination); tensors with no contribution are omitted."""
        w = self.weight_vector(weights)
        out = {}
        for n in self.names:
            d = self._sum(n, w, dtype, self.base[n].device)
            if d is not None:
                out[n] = d
        return out

    def params(self, weights) -> dict[str, Tensor]:
        """Assembled tensors ``theta_0 + sum_k w_k tau^_k`` for every switched name (cached)."""
        w = self.weight_vector(weights)
        key = tuple(round(float(v), 10) for v in w)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out: dict[str, Tensor] = {}
        lora_pairs = self._lora_pairs() if self.lora_mix == "product" else {}
        done: set[str] = set()
        for n in self.names:
            if n in done:
                continue
            if n in lora_pairs:
                a_name, b_name = lora_pairs[n]
                out.update(self._lora_product(a_name, b_name, w))
                done.update((a_name, b_name))
                continue
            base = self.base[n]
            d = self._sum(n, w, torch.float32, base.device)
            out[n] = (
                base
                if d is None
                else (d.add_(base) if base.dtype == torch.float32 else (base + d).to(base.dtype))
            )
        if self.cache_size > 0:
            self._cache[key] = out
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    def state_for(self, task: str) -> dict[str, Tensor]:
        """Full state (``theta_0`` everywhere, ``theta_0 + tau^_task`` on the switched tensors)."""
        out = dict(self.base)
        out.update(self.params(task))
        return out

    # LoRA product mixing ----------------------------------------------------------------------------
    def _lora_pairs(self) -> dict[str, tuple[str, str]]:
        pairs = {}
        for n in self.names:
            if "lora_A" in n:
                b = n.replace("lora_A", "lora_B")
                if b in self.base:
                    pairs[n] = pairs[b] = (n, b)
        return pairs

    def _lora_product(self, a_name: str, b_name: str, w: Tensor) -> dict[str, Tensor]:
        As, Bs = [], []
        for k, task in enumerate(self.tasks):
            c = float(w[k])
            sw = self.switches[task]
            if c == 0.0 or a_name not in sw.signs or b_name not in sw.signs:
                continue
            As.append(sw.tensor(a_name))
            Bs.append(sw.tensor(b_name) * c)
        a0, b0 = self.base[a_name], self.base[b_name]
        if not As:
            return {a_name: torch.zeros_like(a0), b_name: torch.zeros_like(b0)}
        return {a_name: torch.cat(As, 0).to(a0.dtype), b_name: torch.cat(Bs, 1).to(b0.dtype)}


def lora_zero_base(peft_model: nn.Module, pattern: Sequence[str] = ("lora_A", "lora_B")) -> dict[str, Tensor]:
    """State of a PEFT model with its LoRA factors set to zero: the ``theta_0`` of the LoRA table.

    The official code *replaces* the LoRA factors by ``sum_k w_k A^_k`` (no pre-trained factor), which is
    ``theta_0 + delta`` with ``theta_0 = 0`` on those tensors.
    """
    sd = state_dict_of(peft_model, include_buffers=True)
    return {n: (torch.zeros_like(t) if any(p in n for p in pattern) else t) for n, t in sd.items()}


def output_tensor(out):
    """The tensor of a model output (``.logits`` of ``transformers`` outputs)."""
    return out.logits if hasattr(out, "logits") else out


class SwitchedModel(nn.Module):
    """Runs ``module`` with ``theta_0 + sum_k w_k tau^_k`` via ``functional_call``.

    ``forward(*args, weights=..., overrides=None, **kwargs)``: ``weights`` is a task name, a mapping
    or a ``[K]`` tensor; ``None`` runs the pre-trained model. ``overrides`` replaces further tensors
    (e.g. the evaluated task's head, kept in full precision).
    """

    def __init__(self, module: nn.Module, bank: TaskSwitchBank) -> None:
        super().__init__()
        self.module = module
        self.bank = bank
        own = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
        missing = [n for n in bank.names if n not in own]
        if missing:
            raise KeyError(f"switched tensors not found in the module: {missing[:5]}")

    def forward(self, *args, weights=None, overrides: Mapping[str, Tensor] | None = None, **kwargs):
        params: dict[str, Tensor] = {} if weights is None else dict(self.bank.params(weights))
        if overrides:
            params.update(overrides)
        if not params:
            return self.module(*args, **kwargs)
        return functional_call(self.module, params, args, kwargs, strict=False)
