"""One stage-2 training step of the default ESMA generator on a ResNet-50 source: measured time and FLOPs.

The README's wall-time estimates for the paper tables on 8 GPUs start from these numbers (an estimate:
no GPU was measured). The step is ``EsmaTrainer.train_step`` (generator forward and backward, source
forward and input backward, AdamW) at 224x224; FLOPs are counted by ``torch.utils.flop_counter`` on one
step, time is the median of ``--repeats`` steps after a warm-up. Source: ResNet-50 architecture, random
weights (nothing is downloaded). Writes ``docs/benchmarks/esma-train-step.json``.

    uv run --no-sync python packages/esma/benchmarks/bench_train_step.py --batch 2 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode

from esma import EasySampleBank, EsmaGenerator, EsmaTrainer
from papers_shared.attacks import load_model
from papers_shared.results import environment_info, write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2, help="images per step on this process")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/benchmarks/esma-train-step.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    source = load_model("resnet50", pretrained=False, device=dev)
    bank = EasySampleBank(torch.randn(10, 1000), list(range(10)))
    trainer = EsmaTrainer(EsmaGenerator(10), source, bank, device=dev)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    src = torch.full((args.batch,), -1)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(x, src)
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train_step(x, src)
        sync()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    env = environment_info()
    images = 300 * 13_000  # 300 epochs over the ~13,000 training images of the 10 target classes
    res = {
        "command": f"python packages/esma/benchmarks/bench_train_step.py --batch {args.batch} --size {args.size} "
        f"--repeats {args.repeats} --threads {args.threads} --device {args.device}",
        "date": date.today().isoformat(),
        "hardware": {"device": str(dev), "cpu": env["cpu"], "threads": args.threads, "gpu": env["gpu"]},
        "torch": env["torch"],
        "batch": args.batch,
        "image_size": args.size,
        "step_s_median": step,
        "step_s_all": times,
        "s_per_image": step / args.batch,
        "flops_per_step": flops,
        "gflops_per_image": flops / args.batch / 1e9,
        "stage2_images_paper": images,
        "stage2_pflops_paper": flops / args.batch * images / 1e15,
    }
    print(f"step {step:.2f} s for {args.batch} images ({step / args.batch:.2f} s/image), "
          f"{flops / args.batch / 1e9:.1f} GFLOP/image; stage 2 of a paper table: {res['stage2_pflops_paper']:.0f} PFLOP")  # fmt: skip
    write_json(res, args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
