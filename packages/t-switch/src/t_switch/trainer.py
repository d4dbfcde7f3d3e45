"""Training loops: LoRA fine-tuning of one task (the ViT-LoRA table) and the small classifier loop of the
digits table.

:func:`train_lora` follows the official ``merge_vit/merge_vit_lora.py:train_lora_model`` (68bfda8): Adam
on the LoRA factors only, StepLR, cross-entropy through the task's frozen zero-shot head. Ours: atomic
per-epoch checkpoints with resume (``CheckpointManager``, loaded with ``weights_only=True``) and a finished
run cached as ``done.safetensors``, which is rebuilt, with a warning, when it is damaged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from papers_shared.checkpoints import CheckpointError, CheckpointManager, load_safetensors, save_safetensors
from t_switch.config import LoraTrainConfig
from t_switch.evaluate import run_params

__all__ = ["lora_parameters", "train_classifier", "train_lora"]


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA factors of a PEFT model, by name."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _load_done(done: Path, params: Mapping[str, nn.Parameter]) -> bool:
    """Copy a finished run's factors into ``params``; a damaged or foreign cache is removed (warning)."""
    if not done.is_file():
        return False
    try:
        state, _ = load_safetensors(done)
        missing = sorted(set(params) - set(state))
        if missing:
            raise CheckpointError(f"{done} lacks LoRA factors {missing[:3]}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])
        return True
    except CheckpointError as exc:
        warnings.warn(f"rebuilding the damaged LoRA cache {done}: {exc}", RuntimeWarning, stacklevel=3)
        done.unlink(missing_ok=True)
        return False


def train_lora(
    model: nn.Module,
    head: Mapping[str, Tensor],
    batches: Callable[[int], Iterable],
    cfg: LoraTrainConfig,
    out: str | Path,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Fine-tune the LoRA factors of ``model`` on one task; resumable, cached in ``out``.

    ``head`` replaces the head tensors (the task's zero-shot head, frozen); ``batches(epoch)`` yields the
    epoch's ``(x, y)`` batches (seed its shuffling from the epoch so a resumed run sees the same order).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    params = lora_parameters(model)
    if not params:
        raise ValueError("the model has no LoRA factors (parameters named 'lora_*')")
    if _load_done(out / "done.safetensors", params):
        return model.eval()
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    opt = torch.optim.Adam(params.values(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    mgr = CheckpointManager(out / "ckpt")
    start = 0
    state = mgr.load_latest()
    if state is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["lora"][n])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start = int(state["epoch"]) + 1
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start, cfg.epochs):
        model.train()
        for x, y in tqdm(
            batches(epoch), desc=f"LoRA {out.name} {epoch + 1}/{cfg.epochs}", disable=not progress
        ):
            if device is not None:
                x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss_fn(run_params(model, head, x), y).backward()
            opt.step()
        sched.step()
        mgr.save(
            epoch,
            {
                "lora": {n: p.detach().cpu() for n, p in params.items()},
                "optim": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch,
            },
        )
    save_safetensors({n: p.detach() for n, p in params.items()}, out / "done.safetensors")
    return model.eval()


def train_classifier(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> nn.Module:
    """Adam + cross-entropy on in-memory tensors, shuffled by ``generator`` (the digits table)."""
    opt = torch.optim.Adam(params, lr=lr, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=generator)
        for i in range(0, x.shape[0], batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            loss_fn(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()
