"""``OFSDPOTrainer(DPOTrainer)``: two LoRA modules (fast, slow) on one frozen base, chasing each other.

Mapping onto trl (ours; trl 1.16 ``trl/trainer/dpo_trainer.py:DPOTrainer``):

1. ``__init__``: trl wraps the base model and creates adapter ``"default"`` = the **fast** module; we add the
   **slow** adapter with the same ``LoraConfig`` (optionally an exact copy, ``identical_init``) and keep both
   trainable. The reference is the base with adapters disabled (or trl's frozen ``"ref"`` copy when a
   ``PeftModel`` with a pretrained adapter is passed), never a second model copy.
2. ``create_optimizer``: two parameter groups, ``η_F`` and ``η_F·slow_lr_ratio``; the default scheduler is a
   multiplicative ``LambdaLR``, so the ratio holds for the whole run.
3. ``_compute_loss``: one reference forward, one forward per adapter through trl's fused LM head, the
   objectives of :func:`~ofs_dpo.losses.ofs_objectives` (the paper's Eq. 3-4) and one backward on ``J_L + J_C``.
4. Role bookkeeping in :class:`ChasingCallback` on optimiser steps (the paper's Algorithm 1).
5. Checkpoints hold both adapters (PEFT writes the slow one to a sub-folder) plus ``ofs_state.json``.

Distributed: single process (CPU/GPU) and DDP (one process per GPU, ``accelerate launch``/``torchrun``) are
supported. Under DDP the adapters' forwards bypass the DDP wrapper (two forwards of different parameter subsets
per step are not what DDP's reducer expects) and the adapter gradients are all-reduced explicitly on the
synchronising micro-step. DeepSpeed and FSDP are rejected.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import DPOTrainer
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from ofs_dpo.adapters import (
    activate_adapter,
    adapter_parameters,
    copy_adapter,
    make_checkpointing_adapter_aware,
    restore_trainable,
    swap_adapters,
)
from ofs_dpo.config import OFSDPOConfig
from ofs_dpo.losses import (
    OFSObjectives,
    dpo_margins,
    ofs_objectives,
    preference_loss,
    token_logps_to_sequence,
)
from papers_shared.errors import CheckpointError

__all__ = ["OFS_STATE_NAME", "ChasingCallback", "ChasingState", "OFSDPOTrainer"]

OFS_STATE_NAME = "ofs_state.json"


@dataclass
class ChasingState:
    """Role bookkeeping of the paper's Algorithm 1 (serialised to ``ofs_state.json``)."""

    leader: str = "fast"
    window_fast: list[float] = field(default_factory=list)
    window_slow: list[float] = field(default_factory=list)
    pending_fast: list[float] = field(default_factory=list)
    pending_slow: list[float] = field(default_factory=list)
    num_swaps: int = 0
    last_check_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChasingState:
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        state = cls(**known)
        if state.leader not in ("fast", "slow"):
            raise ValueError(f"invalid leader {state.leader!r} in OFS state")
        return state


class ChasingCallback(TrainerCallback):
    """Calls the trainer's role check after every optimiser step (so gradient accumulation counts steps)."""

    def __init__(self, trainer: OFSDPOTrainer) -> None:
        self._trainer = weakref.ref(trainer)

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is not None:
            trainer._on_optimizer_step(state.global_step)
        return control


class OFSDPOTrainer(DPOTrainer):
    """Drop-in ``DPOTrainer`` for OFS-DPO (arXiv 2406.05534, Sec. 3).

    Args are those of ``trl.DPOTrainer``; ``args`` must be an :class:`~ofs_dpo.OFSDPOConfig` and either
    ``peft_config`` (a ``peft.LoraConfig``) or a ``PeftModel`` is required. ``ref_model`` must be ``None``.

    Attributes:
        leader: ``"fast"`` or ``"slow"``, the module currently in the F (leader) role.
        leader_adapter: PEFT adapter name of the leader.
        chasing: the :class:`ChasingState`.
    """

    _tag_names = ["trl", "dpo", "ofs-dpo"]
    _name = "OFS-DPO"

    def __init__(
        self,
        model,
        ref_model=None,
        args: OFSDPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        from peft import LoraConfig, PeftModel

        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = OFSDPOConfig(f"{str(name).split('/')[-1] or 'model'}-OFS-DPO")
        if not isinstance(args, OFSDPOConfig):
            raise TypeError(f"args must be an OFSDPOConfig, got {type(args).__name__}")
        if ref_model is not None:
            raise ValueError(
                "OFSDPOTrainer takes no ref_model: the reference is the base model with adapters disabled "
                "(DPO's implicit reward, Rafailov et al. 2023 Eq. 5), shared by the fast and slow modules"
            )
        if peft_config is None and not isinstance(model, PeftModel):
            raise ValueError(
                "OFSDPOTrainer needs a peft_config (LoraConfig) or a PeftModel: both modules are LoRA"
            )
        if peft_config is not None and not isinstance(peft_config, LoraConfig):
            raise TypeError(f"peft_config must be a peft.LoraConfig, got {type(peft_config).__name__}")
        if isinstance(model, PeftModel) and not isinstance(model.peft_config.get("default"), LoraConfig):
            raise TypeError("the PeftModel must hold a LoRA adapter named 'default'")
        if compute_metrics is not None:
            raise ValueError("compute_metrics is not supported: OFS-DPO logs its preference metrics itself")
        if args.deepspeed or args.fsdp:
            raise ValueError("OFSDPOTrainer supports single-process and DDP training, not DeepSpeed or FSDP")
        if optimizers[0] is not None:
            raise ValueError("OFSDPOTrainer builds its two-group optimiser itself; do not pass `optimizers`")

        super().__init__(
            model=model,
            ref_model=None,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        pm = self.model
        self.fast_adapter = args.fast_adapter_name
        self.slow_adapter = args.slow_adapter_name
        if self.slow_adapter in pm.peft_config:
            raise ValueError(f"the model already has an adapter named {self.slow_adapter!r}")
        # Trainer re-seeds with args.seed, which would give the slow adapter the fast one's random init even
        # without identical_init; draw it from its own stream instead.
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(args.seed + 1)
            pm.add_adapter(self.slow_adapter, pm.peft_config[self.fast_adapter])
        if args.identical_init:
            copy_adapter(pm, self.fast_adapter, self.slow_adapter)
        if args.disable_dropout:
            disable_dropout_in_model(pm)
        self._trainable = (self.fast_adapter, self.slow_adapter)
        activate_adapter(pm, self.fast_adapter, self._trainable)
        for name in pm.peft_config:
            if name not in self._trainable:
                pm.set_requires_grad(name, False)
        self.chasing = ChasingState()
        self.add_callback(ChasingCallback(self))
        self._skipped_steps = 0

    # ------------------------------------------------------------------------------------------------------------
    # Roles
    # ------------------------------------------------------------------------------------------------------------

    @property
    def leader(self) -> str:
        return self.chasing.leader

    @property
    def leader_adapter(self) -> str:
        return self.fast_adapter if self.chasing.leader == "fast" else self.slow_adapter

    def _adapter_of(self, module: str) -> str:
        return self.fast_adapter if module == "fast" else self.slow_adapter

    def swap_roles(self) -> None:
        """Exchange leader and chaser now: role labels (``swap_mode="roles"``/``"none"``) or weights+Adam states."""
        if self.args.swap_mode == "weights":
            pm = self.accelerator.unwrap_model(self.model)
            swap_adapters(pm, self.fast_adapter, self.slow_adapter, self.optimizer)
        else:
            self.chasing.leader = "slow" if self.chasing.leader == "fast" else "fast"
        self.chasing.num_swaps += 1

    def _on_optimizer_step(self, step: int) -> None:
        """Push the step's mean DPO losses into the window; every K steps re-assign roles (the paper's Algorithm 1)."""
        st = self.chasing
        # Only micro-batches whose two losses are finite count (a skipped non-finite step must not poison the
        # window: a NaN mean would make every comparison false and silently keep the roles) (ours).
        pairs = [
            (f, s) for f, s in zip(st.pending_fast, st.pending_slow) if math.isfinite(f) and math.isfinite(s)
        ]
        if pairs:
            st.window_fast.append(sum(f for f, _ in pairs) / len(pairs))
            st.window_slow.append(sum(s for _, s in pairs) / len(pairs))
        st.pending_fast.clear()
        st.pending_slow.clear()
        if self.args.swap_mode == "none" or step % self.args.chase_interval != 0 or not st.window_fast:
            return
        mean_fast = sum(st.window_fast) / len(st.window_fast)
        mean_slow = sum(st.window_slow) / len(st.window_slow)
        current = st.leader if self.args.swap_mode == "roles" else "fast"
        winner = "fast" if mean_fast < mean_slow else "slow" if mean_slow < mean_fast else current
        if winner != current:
            self.swap_roles()
        st.history.append({"step": step, "fast": mean_fast, "slow": mean_slow, "winner": winner})
        st.last_check_step = step
        st.window_fast.clear()
        st.window_slow.clear()

    # ------------------------------------------------------------------------------------------------------------
    # Optimiser: two parameter groups, η_F and η_S (ours)
    # ------------------------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """AdamW (or ``args.optim``) over two parameter groups: fast ``η_F``, slow ``η_F·slow_lr_ratio``."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        slow = adapter_parameters(opt_model, self.slow_adapter)
        fast = {n: p for n, p in opt_model.named_parameters() if p.requires_grad and n not in slow}
        lr = self.args.learning_rate
        groups = []
        for role, params, group_lr in (("fast", fast, lr), ("slow", slow, lr * self.args.slow_lr_ratio)):
            with_decay = [p for n, p in params.items() if p.requires_grad and n in decay]
            no_decay = [p for n, p in params.items() if p.requires_grad and n not in decay]
            if with_decay:
                groups.append(
                    {
                        "params": with_decay,
                        "weight_decay": self.args.weight_decay,
                        "lr": group_lr,
                        "ofs_module": role,
                    }
                )
            if no_decay:
                groups.append({"params": no_decay, "weight_decay": 0.0, "lr": group_lr, "ofs_module": role})
        if not any(g["ofs_module"] == "slow" for g in groups):
            raise RuntimeError("the slow adapter has no trainable parameters (PEFT's set_adapter froze it)")
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(f"optim={self.args.optim!r} builds its own parameter groups; OFS-DPO needs two")
        optimizer_kwargs = dict(optimizer_kwargs)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------------------------------------------------
    # Loss (the paper's Eq. 3-6; one backward on J_L + J_C)
    # ------------------------------------------------------------------------------------------------------------

    def _model_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        kwargs = {k: v for k, v in inputs.items() if k not in skip}
        kwargs["use_cache"] = False
        return kwargs

    def _reference_logps(self, pm, model_kwargs, labels, shift_mask, inputs) -> torch.Tensor:
        if self.precompute_ref_logps:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]], dim=0)
        ref_name = "ref" if "ref" in pm.peft_config else None
        with torch.no_grad(), use_adapter(pm, adapter_name=ref_name):
            out = pm(**model_kwargs, labels=labels, fused_lm_head=True)
        restore_trainable(pm, self._trainable)
        per_token = out.log_probs[:, -shift_mask.size(1) :]
        return token_logps_to_sequence(per_token, shift_mask, self.ld_alpha, validate=False)

    def _module_forward(self, pm, module: str, model_kwargs, labels, shift_mask):
        activate_adapter(pm, self._adapter_of(module), self._trainable)
        out = pm(**model_kwargs, labels=labels, fused_lm_head=True)
        per_token = out.log_probs[:, -shift_mask.size(1) :]
        logps = token_logps_to_sequence(per_token, shift_mask, self.ld_alpha, validate=False)
        return logps, out

    def _base_loss(self, logps, ref_logps, completion_mask) -> torch.Tensor | None:
        """Weighted sum of the configured loss types; ``None`` for plain sigmoid DPO (computed from ``h``)."""
        if self.loss_types == ["sigmoid"] and self.loss_weights == [1.0]:
            return None
        chosen_lr, rejected_lr = (logps - ref_logps).chunk(2, dim=0)
        chosen_len, rejected_len = completion_mask.sum(dim=1).to(logps.dtype).chunk(2, dim=0)
        total = 0.0
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            per_pair = preference_loss(
                chosen_lr, rejected_lr, self.beta, loss_type, self.label_smoothing, chosen_len, rejected_len
            )
            total = total + weight * per_pair.mean()
        return total

    def _forward_modules(self, model, inputs, modules: tuple[str, ...]) -> dict[str, Any]:
        """Reference log-probs once, then one forward per module; returns log-probs, margins and base losses."""
        pm = self.accelerator.unwrap_model(model)
        model_kwargs = self._model_kwargs(inputs)
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
        ref_logps = self._reference_logps(pm, ref_kwargs, labels, shift_mask, inputs)
        if torch.is_grad_enabled():
            make_checkpointing_adapter_aware(pm, self._trainable)
        logps, outs, margins, base, aux = {}, {}, {}, {}, {}
        try:
            for m in modules:
                logps[m], outs[m] = self._module_forward(pm, m, model_kwargs, labels, shift_mask)
                margins[m] = dpo_margins(logps[m], ref_logps, self.beta, validate=False)
                base[m] = self._base_loss(logps[m], ref_logps, completion_mask)
                aux[m] = self.router_aux_loss_coef * outs[m].aux_loss if self.aux_loss_enabled else 0.0
        finally:
            activate_adapter(pm, self.fast_adapter, self._trainable)
        return {
            "ref_logps": ref_logps,
            "logps": logps,
            "outs": outs,
            "margins": margins,
            "base": base,
            "aux": aux,
            "shift_mask": shift_mask,
        }

    def compute_objectives(self, model, inputs) -> tuple[OFSObjectives, dict[str, Any]]:
        """The OFS-DPO terms (the paper's Eq. 3-4) on one collated batch, with the current roles (differentiable)."""
        fw = self._forward_modules(model, inputs, ("fast", "slow"))
        obj = ofs_objectives(
            fw["margins"]["fast"],
            fw["margins"]["slow"],
            alpha=self.args.chase_alpha,
            leader=self.chasing.leader,
            mode=self.args.chase_mode,
            clamp=self.args.chase_margin_clamp,
            base_fast=fw["base"]["fast"],
            base_slow=fw["base"]["slow"],
            validate=False,
        )
        return obj, fw

    def _compute_loss(self, model, inputs, return_outputs=False):
        if return_outputs:
            raise ValueError("OFSDPOTrainer does not return model outputs (compute_metrics is not supported)")
        if self.model.training:
            obj, fw = self.compute_objectives(model, inputs)
            loss = obj.total + fw["aux"]["fast"] + fw["aux"]["slow"]
            self._log_train(obj, fw, inputs)
            if self.args.skip_nonfinite_steps and not bool(torch.isfinite(loss)):
                self._skipped_steps += 1
                self._metrics["train"]["ofs/skipped_steps"].append(float(self._skipped_steps))
                # A fresh leaf: backward leaves every adapter grad None, so the optimiser skips the step.
                loss = torch.zeros((), device=loss.device, dtype=loss.dtype, requires_grad=True)
            return loss
        return self._eval_loss(model, inputs)

    def _eval_loss(self, model, inputs) -> torch.Tensor:
        """Evaluation of ``eval_module`` (ours): the leader by default, or fast/slow/both."""
        leader = self.chasing.leader
        choice = self.args.eval_module
        modules = ("fast", "slow") if choice == "both" else (leader,) if choice == "leader" else (choice,)
        fw = self._forward_modules(model, inputs, modules)
        primary = leader if leader in modules else modules[0]
        for m in modules:
            prefix = "" if len(modules) == 1 else f"{m}/"
            self._log_module("eval", prefix, fw["logps"][m], fw["ref_logps"], fw["outs"][m], fw["shift_mask"])
        if len(modules) == 2:
            chaser = "slow" if leader == "fast" else "fast"
            gap = fw["margins"][leader] - fw["margins"][chaser]
            self._metrics["eval"]["ofs/margin_gap"].append(self._mean(gap))
            p = primary
            self._log_module("eval", "", fw["logps"][p], fw["ref_logps"], fw["outs"][p], fw["shift_mask"])
        base = fw["base"][primary]
        if base is None:
            base = -torch.nn.functional.logsigmoid(fw["margins"][primary]).mean()
        return base + fw["aux"][primary]

    # ------------------------------------------------------------------------------------------------------------
    # Logging (ours)
    # ------------------------------------------------------------------------------------------------------------

    def _mean(self, t: torch.Tensor) -> float:
        t = t.detach().float().reshape(-1)
        return self.accelerator.gather_for_metrics(t).mean().item()

    def _log_module(self, mode, prefix, logps, ref_logps, out, shift_mask) -> None:
        chosen_logps, rejected_logps = logps.detach().chunk(2, dim=0)
        chosen_lr, rejected_lr = (logps.detach() - ref_logps).chunk(2, dim=0)
        chosen_rewards, rejected_rewards = self.beta * chosen_lr, self.beta * rejected_lr
        metrics = self._metrics[mode]
        metrics[f"{prefix}rewards/chosen"].append(self._mean(chosen_rewards))
        metrics[f"{prefix}rewards/rejected"].append(self._mean(rejected_rewards))
        metrics[f"{prefix}rewards/accuracies"].append(self._mean((chosen_rewards > rejected_rewards).float()))
        metrics[f"{prefix}rewards/margins"].append(self._mean(chosen_rewards - rejected_rewards))
        metrics[f"{prefix}logps/chosen"].append(self._mean(chosen_logps))
        metrics[f"{prefix}logps/rejected"].append(self._mean(rejected_logps))
        if getattr(out, "entropy", None) is not None:
            ent = out.entropy[:, -shift_mask.size(1) :].detach()
            tot = self.accelerator.gather_for_metrics(shift_mask.sum()).sum()
            ent_sum = self.accelerator.gather_for_metrics((ent * shift_mask).sum()).sum()
            metrics[f"{prefix}entropy"].append((ent_sum / tot).item() if tot > 0 else 0.0)

    def _log_train(self, obj: OFSObjectives, fw: dict[str, Any], inputs) -> None:
        metrics = self._metrics["train"]
        fast_loss, slow_loss = self._mean(obj.dpo_fast), self._mean(obj.dpo_slow)
        if math.isfinite(fast_loss) and math.isfinite(slow_loss):  # the role window sees finite losses only
            self.chasing.pending_fast.append(fast_loss)
            self.chasing.pending_slow.append(slow_loss)
        metrics["ofs/dpo_loss_fast"].append(fast_loss)
        metrics["ofs/dpo_loss_slow"].append(slow_loss)
        metrics["ofs/chase_loss"].append(self._mean(obj.chase))
        metrics["ofs/margin_gap"].append(self._mean(obj.margin_gap))
        metrics["ofs/leader_is_fast"].append(1.0 if obj.leader == "fast" else 0.0)
        metrics["ofs/grad_weight_dpo"].append(self._mean(obj.grad_weight_dpo))
        metrics["ofs/grad_weight_chase"].append(self._mean(obj.grad_weight_chase))
        num_tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._total_train_tokens += num_tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        lead = obj.leader
        self._log_module("train", "", fw["logps"][lead], fw["ref_logps"], fw["outs"][lead], fw["shift_mask"])

    # ------------------------------------------------------------------------------------------------------------
    # Steps, evaluation, DDP
    # ------------------------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            self._all_reduce_adapter_grads()
        return loss

    def _all_reduce_adapter_grads(self) -> None:
        """Average the adapters' gradients over processes (DDP; the forwards bypass DDP's reducer)."""
        import torch.distributed as dist

        pm = self.accelerator.unwrap_model(self.model)
        params = [p for n in self._trainable for p in adapter_parameters(pm, n).values()]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.accelerator.num_processes
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------------------------------------------------
    # Saving / loading (ours)
    # ------------------------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            out = Path(output_dir if output_dir is not None else self.args.output_dir)
            state = {
                **self.chasing.to_dict(),
                "fast_adapter": self.fast_adapter,
                "slow_adapter": self.slow_adapter,
                "swap_mode": self.args.swap_mode,
            }
            tmp = out / f".{OFS_STATE_NAME}.tmp"
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, out / OFS_STATE_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from peft import set_peft_model_state_dict

        from papers_shared.checkpoints import load_safetensors

        pm = self.accelerator.unwrap_model(model if model is not None else self.model)
        ckpt = Path(resume_from_checkpoint)
        files = {
            self.fast_adapter: ckpt / "adapter_model.safetensors",
            self.slow_adapter: ckpt / self.slow_adapter / "adapter_model.safetensors",
        }
        for name, path in files.items():
            if not path.is_file():
                raise FileNotFoundError(
                    f"OFS-DPO checkpoint {ckpt} lacks the {name!r} adapter weights ({path}); both adapters are "
                    "needed to resume"
                )
            result = set_peft_model_state_dict(pm, load_safetensors(path)[0], adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k]
            if missing:
                raise CheckpointError(f"checkpoint adapter {name!r} in {path} is missing {missing[:3]}")
        self.load_ofs_state(ckpt)
        restore_trainable(pm, self._trainable)

    def load_ofs_state(self, directory: str | Path) -> None:
        """Restore roles and buffers from ``<directory>/ofs_state.json``."""
        path = Path(directory) / OFS_STATE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {OFS_STATE_NAME} in {directory}; was it written by OFSDPOTrainer?")
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            self.chasing = ChasingState.from_dict(state)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"could not read {path}: damaged OFS state ({exc})") from None

    def export_leader(self, path: str | Path) -> Path:
        """Save the leader adapter alone as a standard PEFT adapter folder (loadable as ``"default"``)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        pm = self.accelerator.unwrap_model(self.model)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        name = self.leader_adapter
        sd = get_peft_model_state_dict(pm, adapter_name=name, save_embedding_layers=False)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path / "adapter_model.safetensors")
        )
        pm.peft_config[name].save_pretrained(str(path))
        return path

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self._metrics[mode]["ofs/num_swaps"] = [float(self.chasing.num_swaps)]
        super().log(logs, start_time)
