"""Step time of the paper-scale small model, for the wall-time estimates of the multi-GPU runs.

Measures, on the device given, one STM training step (ViT-B/16 at 224 px with random weights, LoRA r = 10
on query/value, a prototype head; forward + backward + Adam) and one inference pass per image, as medians
of interleaved repeats after a warm-up. From them it estimates the small-model part of each paper table
on 1 and 8 GPUs: ``train images x epochs`` training steps + 3 passes over every task's images (prototypes
before and after training, evaluation of the seen classes, roughly) divided by the number of processes.
Scenario replay (SDXL) and the large model (descriptions, slow path) are not included. Writes JSON.

    uv run --no-sync python packages/sr-cis/benchmarks/bench_step_time.py --device cuda --batch 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

#: (training images, STM epochs) per table config
TABLES = {"cifar100_10t": (50_000, 20), "imagenet_r_10t": (24_000, 50), "domainnet_5t": (409_832, 5)}


def main(argv=None) -> int:
    from transformers import ViTConfig, ViTModel

    from papers_shared.results import write_json
    from sr_cis.config import LoraSpec
    from sr_cis.prototypes import PrototypeHead
    from sr_cis.small_model import SmallModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/benchmarks/sr-cis-step_time.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = SmallModel(ViTModel(ViTConfig(), add_pooling_layer=False), LoraSpec(r=10, alpha=10)).to(dev)
    model.add_task_adapter("stm_0", seed=0)
    head = PrototypeHead.from_prototypes(torch.randn(10, model.dim), list(range(10))).to(dev)
    opt = torch.optim.Adam(model.trainable_parameters("stm_0") + list(head.parameters()), lr=5e-4)
    x = torch.rand(args.batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        loss = F.cross_entropy(head(model.features(x, "stm_0")), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer():
        head(model.features(x, "stm_0"))

    times: dict[str, list[float]] = {"train": [], "infer": []}
    for i in range(args.repeats + 1):
        for name, fn in (("train", train_step), ("infer", infer)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i:  # the first round is the warm-up
                times[name].append(time.perf_counter() - t0)
    per_img = {k: statistics.median(v) / args.batch for k, v in times.items()}
    est = {}
    for table, (n, epochs) in TABLES.items():
        single = n * epochs * per_img["train"] + 3 * n * per_img["infer"]
        est[table] = {"hours_1_process": single / 3600, "hours_8_processes": single / 8 / 3600}
    out = {
        "setup": vars(args) | {"model": "ViT-B/16 224px, random weights, LoRA r=10 on query/value"},
        "seconds_per_image": per_img,
        "estimate_small_model_only": est,
        "note": "an estimate from the measured step time: DDP communication, data loading, SDXL replay and the "
        "large model are not included",
    }
    write_json(out, args.out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
