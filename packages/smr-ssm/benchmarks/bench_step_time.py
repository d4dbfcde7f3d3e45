"""Training-step time of the paper-scale configs on one device, for the README's wall-time estimates (ours).

One optimizer step (forward, backward, AdamW with the package's parameter groups) of each shipped config's
model at its global batch and length, on random tokens / pixels; median of ``--repeats`` timed steps after
``--warmup``. The estimate of a whole run on N devices is ``median * max_steps / N`` (linear scaling,
communication ignored): an estimate, not a measurement.

    uv run --no-sync python packages/smr-ssm/benchmarks/bench_step_time.py --device cuda \\
        --out docs/benchmarks/smr-ssm-step-time.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.results import write_json
from smr_ssm.config import ExperimentConfig
from smr_ssm.data import LRA_TASKS
from smr_ssm.models import SSMForCausalLM, SSMForSequenceClassification
from smr_ssm.trainer import build_optimizer

CONFIGS = ["lm_wt103_s4d", "lm_wt103_s4d_smr", "lra_image_s4d_smr", "lm_wt103_mamba", "lm_wt103_mamba_smr"]


def _model_and_batch(cfg: ExperimentConfig, device: torch.device):
    g = torch.Generator().manual_seed(0)
    b = cfg.train.batch_size
    if cfg.experiment == "lm":
        model = SSMForCausalLM(cfg.model.to_hf(vocab_size=50257))
        ids = torch.randint(0, 50257, (b, cfg.lm.context), generator=g)
        return model, {"input_ids": ids.to(device), "labels": ids.to(device)}
    info = LRA_TASKS[cfg.lra.task]
    hf = cfg.model.to_hf(vocab_size=info["vocab_size"] or 1, encoder=info["encoder"], input_dim=1,
                         num_labels=info["num_labels"], dual=info["dual"], pooling=cfg.lra.pooling)  # fmt: skip
    model = SSMForSequenceClassification(hf)
    length = cfg.lra.max_length or info["max_length"]
    batch = {"labels": torch.randint(0, info["num_labels"], (b,), generator=g).to(device)}
    if info["vocab_size"] is None:
        batch["input_values"] = torch.rand(b, length, 1, generator=g).to(device)
    else:
        batch["input_ids"] = torch.randint(0, info["vocab_size"], (b, length), generator=g).to(device)
    return model, batch


def time_config(name: str, device: torch.device, warmup: int, repeats: int) -> dict:
    cfg = load_config(ExperimentConfig, resolve_config("smr_ssm", name))
    torch.manual_seed(0)
    model, batch = _model_and_batch(cfg, device)
    model.to(device).train()
    opt = build_optimizer(model, cfg.train)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "config": name,
        "batch_size": cfg.train.batch_size,
        "max_steps": cfg.train.max_steps,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": step,
        "steps_s": times,
        "estimate_h": {n: step * cfg.train.max_steps / n / 3600 for n in (1, 8)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/smr-ssm-step-time.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    env = {"torch": torch.__version__}
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for name in args.configs.split(","):  # the JSON is rewritten after each config
        row = time_config(name, device, args.warmup, args.repeats)
        print(
            f"{name:>24}  {row['step_s'] * 1e3:8.1f} ms/step  8 devices: {row['estimate_h'][8]:.1f} h",
            flush=True,
        )
        rows.append(row)
        write_json({"rows": rows, "environment": env}, args.out)


if __name__ == "__main__":
    main()
