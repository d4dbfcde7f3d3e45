"""ESMA benchmark (issue: "adversarial images per second of the generator over MI-FGSM (10 steps) on the
same source model, target >= 10x; storage of one ESMA generator over K TTP generators, vs ~5 %").

Side by side in one process: the default ESMA generator (4.40 M params) attacking through
``EsmaAttack`` (forward + smoothing + projection) and MI-FGSM (10 steps, ``papers_shared.attacks``) on
the same source model (ResNet-50 architecture by default; speed does not depend on the weights, so
random weights are used and nothing is downloaded). Timings are medians over ``--repeats`` after one
warm-up. Storage: parameter counts and fp32 MiB of one ESMA generator vs ``K`` TTP generators.

    uv run --frozen --no-sync python packages/esma/benchmarks/bench_speed_storage.py --size 224 --batch 4
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from esma import EsmaAttack, EsmaGenerator, TTPGenerator
from papers_shared.attacks import MIFGSM, load_model, tiny_cnn
from papers_shared.checkpoints import atomic_write_text


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="resnet50", help="registry name, or 'tiny_cnn'")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mi-steps", type=int, default=10)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="docs/benchmarks/esma-speed-storage.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.source == "tiny_cnn":
        source = tiny_cnn(1000, 3, 16, seed=0).to(dev).eval().requires_grad_(False)
    else:
        source = load_model(args.source, pretrained=False, device=dev)
    class_ids = list(range(args.targets))
    gen = EsmaGenerator(args.targets).to(dev).eval()
    esma = EsmaAttack(gen, class_ids)
    mi = MIFGSM(source, eps=16 / 255, alpha=2 / 255, steps=args.mi_steps, targeted=True)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    t = torch.tensor([class_ids[i % len(class_ids)] for i in range(args.batch)], device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run_esma():
        esma(x, t)
        sync()

    def run_mi():
        mi(x, t)
        sync()

    t_esma = _median_time(run_esma, args.repeats)
    t_mi = _median_time(run_mi, args.repeats)
    ttp = TTPGenerator().num_parameters()
    esma_p = gen.num_parameters()
    res = {
        "command": "python packages/esma/benchmarks/bench_speed_storage.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "hardware": f"{platform.processor() or platform.machine()}, {args.threads} threads, device {dev}",
        "note": "medians after one warm-up; CPU timings on a shared, loaded machine are inflated",
        "source": args.source,
        "image_size": args.size,
        "batch": args.batch,
        "esma_s_per_batch": t_esma,
        "mifgsm_s_per_batch": t_mi,
        "esma_images_per_s": args.batch / t_esma,
        "mifgsm_images_per_s": args.batch / t_mi,
        "speedup_esma_over_mifgsm": t_mi / t_esma,
        "speedup_target": 10.0,
        "esma_params": esma_p,
        "ttp_params_each": ttp,
        "num_targets": args.targets,
        "esma_mib_fp32": esma_p * 4 / 2**20,
        "ttp_total_mib_fp32": args.targets * ttp * 4 / 2**20,
        "storage_ratio_pct": 100.0 * esma_p / (args.targets * ttp),
        "paper_storage_ratio_pct": 5.0,
    }
    print(json.dumps(res, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
