"""Train-step time and peak memory of OFS-DPO relative to trl DPO (issue #7 targets: time <= 2.0x, memory <= 1.3x).

Model: ``GPT2Config(n_layer=6, n_embd=256, n_head=4)``, vocabulary 8 193 (word-level tokenizer built in memory),
sequences of 128 tokens (64 prompt + 64 completion), 4 pairs per step, LoRA r=8 on ``c_attn``; both trainers use
the same ``DPOConfig`` fields (trl defaults: activation checkpointing on, reference = adapters disabled, no
precomputation). Measured twice: with activation checkpointing (trl's default) and without.

- **Time**: wall time of a full optimiser step (``training_step`` = forward + backward, clipping, AdamW,
  scheduler, role bookkeeping: the body of ``Trainer``'s loop), both trainers in this one process, alternating
  step by step after warm-up; the ratio is the median of the per-pair ratios OFS/DPO (robust to the load drifting
  on a shared machine), next to the median step times.
- **Memory**, in a fresh process per method (``--worker``), three figures:
  (a) *peak live tensor bytes* during one optimiser step after warm-up: ``torch.cuda.max_memory_allocated`` on
  CUDA; on CPU the peak of PyTorch's profiler memory timeline (allocations and frees of every tensor, the CPU
  analogue of the CUDA allocator statistic; weights, gradients, optimiser state, activations and the
  recomputation transients of activation checkpointing included). This is the headline ratio.
  (b) tensor accounting: weights + trainable grads + optimiser state + bytes of the distinct non-parameter tensors
  saved for backward (recomputation transients not included).
  (c) the process's peak RSS increase over its RSS before training (noisy: glibc keeps freed pages).

Run: ``uv run python packages/ofs-dpo/benchmarks/bench_step.py`` (writes ``docs/benchmarks/ofs-dpo-step.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "ofs-dpo-step.json"
VOCAB, PROMPT, COMPLETION, PAIRS = 8190, 64, 64, 4


def _setup(method: str, gc: bool, steps: int, out_dir: str):
    import datasets
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    from trl import DPOTrainer

    from ofs_dpo import OFSDPOConfig, OFSDPOTrainer
    from ofs_dpo.cofs import dpo_config_from
    from ofs_dpo.data import toy_tokenizer

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    tok = toy_tokenizer(VOCAB)
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(f"t{rng.randrange(VOCAB)}" for _ in range(n))

    n = PAIRS * steps
    # completions carry COMPLETION-1 words: trl appends EOS, so each sequence is exactly 128 tokens
    ds = Dataset.from_dict(
        {
            "prompt": [text(PROMPT) for _ in range(n)],
            "chosen": [" " + text(COMPLETION - 1) for _ in range(n)],
            "rejected": [" " + text(COMPLETION - 1) for _ in range(n)],
        }
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_layer=6, n_embd=256, n_head=4, n_positions=256, pad_token_id=0)
    )
    args = OFSDPOConfig(
        output_dir=out_dir,
        report_to=[],
        per_device_train_batch_size=PAIRS,
        max_steps=steps,
        learning_rate=1e-4,
        warmup_steps=0,
        bf16=False,
        gradient_checkpointing=gc,
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        max_length=None,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"], task_type="CAUSAL_LM")
    if method == "ofs":
        return OFSDPOTrainer(model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    return DPOTrainer(
        model, args=dpo_config_from(args), train_dataset=ds, processing_class=tok, peft_config=lora
    )


def _prepare_manual(tr, gc: bool, steps: int):
    """Put a trainer in the state ``Trainer.train`` gives it, so its step body can be driven step by step."""
    tr.create_optimizer_and_scheduler(num_training_steps=steps)
    if gc:
        tr.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=tr.args.gradient_checkpointing_kwargs
        )
    tr.current_gradient_accumulation_steps = 1
    tr.accelerator.gradient_state._set_sync_gradients(True)
    tr.model.train()
    batches = [tr._prepare_inputs(b) for b in tr.get_train_dataloader()]
    params = [p for p in tr.model.parameters() if p.requires_grad]
    state = {"i": 0}

    def step() -> None:
        """Trainer's optimiser-step body: forward/backward, clipping, AdamW, scheduler, zero_grad, callbacks."""
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        tr.training_step(tr.model, batch)
        torch.nn.utils.clip_grad_norm_(params, tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        tr.model.zero_grad()
        if hasattr(tr, "_on_optimizer_step"):
            tr._on_optimizer_step(state["i"])

    return step


def _time(repeats: int, warmup: int, gc: bool, tmp: str) -> dict[str, list[float]]:
    """Alternate DPO and OFS steps in this process; per-step times and the paired OFS/DPO ratios."""
    from papers_shared.device import Timer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = {m: _prepare_manual(_setup(m, gc, 4, f"{tmp}/{m}"), gc, repeats + warmup) for m in ("dpo", "ofs")}
    for _ in range(warmup):
        for m in ("dpo", "ofs"):
            steps[m]()
    out: dict[str, list[float]] = {"dpo": [], "ofs": [], "ratio": []}
    for r in range(repeats):
        order = ("dpo", "ofs") if r % 2 == 0 else ("ofs", "dpo")
        pair = {}
        for m in order:
            with Timer(device) as t:
                steps[m]()
            pair[m] = t.seconds
            out[m].append(t.seconds)
        out["ratio"].append(pair["ofs"] / pair["dpo"])
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(method: str, gc: bool, steps: int, tmp: str) -> dict[str, float]:
    """One method in a fresh process: memory by process/allocator statistics and by tensor accounting."""
    import resource

    tr = _setup(method, gc, steps, f"{tmp}/{method}")
    params = {p.untyped_storage().data_ptr() for p in tr.model.parameters()}
    saved: dict[int, int] = {}
    per_step: list[int] = []

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    class Accounting:
        stack = contextlib.ExitStack()

        def on_step_begin(self, *a, **k):
            saved.clear()
            self.stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))

        def on_step_end(self, *a, **k):
            self.stack.close()
            per_step.append(sum(saved.values()))

        def __getattr__(self, name):
            if name.startswith("on_"):
                return lambda *a, **k: None
            raise AttributeError(name)

    profiled: dict[str, int] = {}

    class PeakProfile:
        """Profile the memory timeline of one optimiser step (after warm-up) and record its peak."""

        prof = None

        def on_step_begin(self, args, state, control, **k):
            if state.global_step == profile_step:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = profile(activities=acts, profile_memory=True, record_shapes=True, with_stack=True)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **k):
            if self.prof is not None:
                self.prof.__exit__(None, None, None)
                profiled["cpu_peak_live_tensor_bytes"] = _timeline_peak(self.prof)
                self.prof = None

        def __getattr__(self, name):
            if name.startswith("on_"):
                return lambda *a, **k: None
            raise AttributeError(name)

    profile_step = min(2, steps - 1)
    tr.add_callback(Accounting())
    tr.add_callback(PeakProfile())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    rss0 = _rss_bytes()
    tr.train()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    opt_bytes = sum(
        v.numel() * v.element_size()
        for s in tr.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    trainable = sum(p.numel() * p.element_size() for p in tr.model.parameters() if p.requires_grad)
    res = {
        **profiled,
        "rss_before_train": rss0,
        "peak_rss": peak_rss,
        "train_rss_increase": peak_rss - rss0,
        "saved_activation_bytes": max(per_step),
        "optimizer_state_bytes": opt_bytes,
        "trainable_param_bytes": trainable,
        "param_bytes": sum(p.numel() * p.element_size() for p in tr.model.parameters()),
    }
    if cuda:
        res["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
        res["cuda_peak_over_weights"] = torch.cuda.max_memory_allocated() - base_cuda
    return res


def _timeline_peak(prof) -> int:
    """Peak of the sum of live tensor sizes over the profiler's memory timeline (CPU tensors)."""
    from torch.profiler._memory_profiler import Action

    live = peak = 0
    for _, action, (key, _), size in prof._memory_profile().timeline:
        if key.device.type != "cpu":
            continue
        if action in (Action.PREEXISTING, Action.CREATE):
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def _memory(gc: bool, steps: int, tmp: str) -> dict[str, dict[str, float]]:
    out = {}
    for method in ("dpo", "ofs"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            method,
            "--gc",
            str(int(gc)),
            "--steps",
            str(steps),
            "--tmp",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {method} failed:\n{proc.stderr[-2000:]}")
        out[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--repeats", type=int, default=20, help="timed steps per method (alternating)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    p.add_argument("--steps", type=int, default=4, help="steps of each memory worker (profiles step 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--worker", choices=["dpo", "ofs"], help=argparse.SUPPRESS)
    p.add_argument("--gc", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import tempfile

    tmp = a.tmp or tempfile.mkdtemp(prefix="ofs-bench-")
    if a.worker:
        print(json.dumps(_worker(a.worker, bool(a.gc), a.steps, tmp)))
        return 0
    result = {
        "benchmark": "ofs-dpo train step vs trl DPO",
        "command": "uv run python packages/ofs-dpo/benchmarks/bench_step.py",
        "model": "GPT2Config(n_layer=6, n_embd=256, n_head=4), vocab 8193, LoRA r=8 on c_attn",
        "batch": f"{PAIRS} pairs x 2 sequences x {PROMPT + COMPLETION} tokens",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "targets": {"time_ratio_max": 2.0, "memory_ratio_max": 1.3},
        "settings": {},
    }
    for gc in (True, False):
        times = _time(a.repeats, a.warmup, gc, tmp)
        mem = _memory(gc, a.steps, tmp)
        med = {m: statistics.median(times[m]) for m in ("dpo", "ofs")}
        key = "activation_checkpointing" if gc else "no_checkpointing"
        mem_key = "cuda_peak_allocated" if torch.cuda.is_available() else "cpu_peak_live_tensor_bytes"
        entry = {
            "median_step_s": med,
            "n_timed_steps": len(times["ratio"]),
            "time_ratio": statistics.median(times["ratio"]),
            "time_ratio_of_medians": med["ofs"] / med["dpo"],
            "memory": mem,
            "memory_ratio_process": mem["ofs"][mem_key] / mem["dpo"][mem_key],
            "memory_ratio_process_metric": mem_key,
            "memory_ratio_rss_increase": mem["ofs"]["train_rss_increase"] / mem["dpo"]["train_rss_increase"],
            "memory_ratio_tensor_accounting": (
                mem["ofs"]["saved_activation_bytes"]
                + mem["ofs"]["param_bytes"]
                + 2 * mem["ofs"]["trainable_param_bytes"]
                + mem["ofs"]["optimizer_state_bytes"]
            )
            / (
                mem["dpo"]["saved_activation_bytes"]
                + mem["dpo"]["param_bytes"]
                + 2 * mem["dpo"]["trainable_param_bytes"]
                + mem["dpo"]["optimizer_state_bytes"]
            ),
            "activation_ratio": mem["ofs"]["saved_activation_bytes"] / mem["dpo"]["saved_activation_bytes"],
        }
        entry["meets_targets"] = {
            "time": entry["time_ratio"] <= 2.0,
            "memory_process": entry["memory_ratio_process"] <= 1.3,
            "memory_tensor_accounting": entry["memory_ratio_tensor_accounting"] <= 1.3,
        }
        result["settings"][key] = entry
        print(
            f"[{key}] step DPO {med['dpo'] * 1e3:.1f} ms, OFS {med['ofs'] * 1e3:.1f} ms -> x{entry['time_ratio']:.2f}; "
            f"memory x{entry['memory_ratio_process']:.2f} ({mem_key}), "
            f"x{entry['memory_ratio_tensor_accounting']:.2f} (tensor accounting), "
            f"activations x{entry['activation_ratio']:.2f}",
            flush=True,
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from papers_shared.checkpoints import atomic_write_text

    atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
