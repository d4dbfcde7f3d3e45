"""ESMA inference speed against a 10-step MI-FGSM on the same source model, and storage against TTP.

Issue targets: generator images/s >= 6x a 10-step MI-FGSM on CPU with ``--precision bf16`` and >= 10x on
a GPU; one ESMA generator ~5 % of 10 TTP generators. Variants, timed side by side in one process,
interleaved (one call of every variant per round) after a warm-up, medians over ``--repeats`` rounds:

* ``mifgsm``: MI-FGSM, 10 steps, fp32 (the baseline of every ratio); ``mifgsm_bf16``: the same under
  bf16 autocast (a same-precision reference, not the issue's baseline);
* ``esma_fp32`` / ``esma_bf16``: ``EsmaAttack`` (generator + smoothing + projection), fp32 or bf16
  (``bf16_mode="auto"``: CPU autocast, CUDA bf16 weights); ``esma_bf16_weights``: bf16 from the cached
  bf16 weight copy on every device (``bf16_mode="weights"``: no per-call weight casts, normalisations in
  bf16 too); ``esma_bf16_weights_cl``: the same with the copy and the input in ``channels_last``;
  ``*_compile``: the generator through ``torch.compile`` (inductor;
  timed by default on CUDA only: on a 2-core CPU inductor compiled for 11.6 minutes and ran at 0.6x
  eager, README; ``--compile on`` times it anyway);
* ``resnet50_fwd`` / ``resnet50_fwd_bwd``: one forward (no grad) and one forward + input-gradient
  backward of the source model, the cost unit of the "physical cap" (how many source forwards each
  attack costs).

The source model is the ResNet-50 architecture with random weights (speed does not depend on them, and
nothing is downloaded). Writes one JSON row per variant (default ``docs/benchmarks/esma-speed-storage.json``).

On a CPU without native bf16 (no AVX512-BF16 / AMX: oneDNN refuses bf16 convolutions, every one takes
PyTorch's slow reference path) the bf16 variants would take minutes per call: they are skipped unless
``--force-bf16``, and ``bf16_probe`` records the slowdown of one generator pass at 64x64 instead.

    uv run --no-sync python packages/esma/benchmarks/bench_speed_storage.py --threads 2 --batch 4
    uv run --no-sync python packages/esma/benchmarks/bench_speed_storage.py --threads 2 --batch 4 \
        --repeats 5 --variants mifgsm esma_fp32 esma_bf16 esma_bf16_weights esma_bf16_weights_cl resnet50_fwd
    uv run --no-sync python packages/esma/benchmarks/bench_speed_storage.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch

from esma import EsmaAttack, EsmaGenerator, TTPGenerator
from esma.attack import cpu_has_native_bf16
from papers_shared.attacks import MIFGSM, load_model
from papers_shared.results import environment_info, write_json

VARIANTS = ("mifgsm", "mifgsm_bf16", "esma_fp32", "esma_bf16", "esma_bf16_weights", "esma_bf16_weights_cl",
            "esma_fp32_compile", "esma_bf16_compile", "resnet50_fwd", "resnet50_fwd_bwd")  # fmt: skip


def _build(args, dev: torch.device) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    source = load_model("resnet50", pretrained=False, device=dev)
    class_ids = list(range(args.targets))
    gen = EsmaGenerator(args.targets).to(dev).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    t = torch.tensor([class_ids[i % len(class_ids)] for i in range(args.batch)], device=dev)
    mi = MIFGSM(source, eps=16 / 255, alpha=2 / 255, steps=args.mi_steps, targeted=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    backend = "inductor"

    def esma(
        precision: str, compile: bool, bf16_mode: str = "auto", cl: bool = False
    ) -> Callable[[], object]:
        atk = EsmaAttack(gen, class_ids, precision=precision, compile=compile, compile_backend=backend,
                         bf16_mode=bf16_mode, channels_last=cl)  # fmt: skip
        return lambda: (atk(x, t), sync())

    def mifgsm_bf16() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            mi(x, t)
        sync()

    def fwd() -> None:
        with torch.no_grad():
            source(x)
        sync()

    def fwd_bwd() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(source(xi).logsumexp(1).sum(), xi)
        sync()

    runs = {
        "mifgsm": lambda: (mi(x, t), sync()),
        "mifgsm_bf16": mifgsm_bf16,
        "esma_fp32": esma("fp32", False),
        "esma_bf16": esma("bf16", False),
        "esma_bf16_weights": esma("bf16", False, "weights"),
        "esma_bf16_weights_cl": esma("bf16", False, "weights", cl=True),
        "esma_fp32_compile": esma("fp32", True),
        "esma_bf16_compile": esma("bf16", True),
        "resnet50_fwd": fwd,
        "resnet50_fwd_bwd": fwd_bwd,
    }
    return {k: runs[k] for k in args.variants}


def _bf16_probe(size: int = 64) -> dict[str, float]:
    """One default-generator pass at ``size`` x ``size``, fp32 vs bf16 autocast vs the bf16 weight copy
    (after a warm-up each)."""
    import warnings

    gen = EsmaGenerator(10).eval()
    x, t = torch.rand(1, 3, size, size), torch.tensor([0])
    out = {"size": size}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, atk in (
            ("fp32", EsmaAttack(gen, range(10))),
            ("bf16", EsmaAttack(gen, range(10), precision="bf16", bf16_mode="autocast")),
            ("bf16_weights", EsmaAttack(gen, range(10), precision="bf16", bf16_mode="weights")),
        ):
            atk(x, t)
            t0 = time.perf_counter()
            atk(x, t)
            out[f"{name}_s"] = time.perf_counter() - t0
    out["bf16_over_fp32"] = out["bf16_s"] / out["fp32_s"]
    out["bf16_weights_over_fp32"] = out["bf16_weights_s"] / out["fp32_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (medians)")
    p.add_argument("--mi-steps", type=int, default=10)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="time the torch.compile variants (auto: on CUDA only; inductor on CPU compiles for minutes)",
    )
    p.add_argument("--force-bf16", action="store_true", help="time bf16 even on a CPU without native bf16")
    p.add_argument("--out", default="docs/benchmarks/esma-speed-storage.json")
    args = p.parse_args(argv)
    if args.compile == "off" or (args.compile == "auto" and args.device == "cpu"):
        args.variants = [v for v in args.variants if not v.endswith("_compile")]
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    native_bf16 = dev.type == "cuda" or cpu_has_native_bf16()
    skipped = []
    if not native_bf16 and not args.force_bf16:
        skipped = [v for v in args.variants if "bf16" in v]
        args.variants = [v for v in args.variants if "bf16" not in v]
    probe = None if native_bf16 else _bf16_probe()
    runs = _build(args, dev)

    warmup = {}
    for name, fn in runs.items():  # warm-up: first call (and compilation for the *_compile variants)
        t0 = time.perf_counter()
        fn()
        warmup[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med.get("mifgsm")
    unit = med.get("resnet50_fwd")
    rows = []
    for name in runs:
        rows.append({
            "variant": name,
            "s_per_batch_median": med[name],
            "s_per_batch_all": times[name],
            "first_call_s": warmup[name],
            "images_per_s": args.batch / med[name],
            "speedup_vs_mifgsm_fp32": base / med[name] if base else None,
            "resnet50_forwards": med[name] / unit if unit else None,
        })  # fmt: skip
    gen_params = EsmaGenerator(args.targets).num_parameters()
    ttp = TTPGenerator().num_parameters()
    cap = None
    if base and unit and "esma_fp32" in med:
        cap = {
            "mifgsm_in_resnet50_forwards": base / unit,
            "esma_fp32_in_resnet50_forwards": med["esma_fp32"] / unit,
            "fp32_cap_speedup": base / med["esma_fp32"],
        }
    env = environment_info()
    res = {
        "command": "python packages/esma/benchmarks/bench_speed_storage.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
            for k, v in vars(args).items()
            if k not in ("out", "variants") and v is not False
        )
        + f" --variants {' '.join(runs)}",
        "date": date.today().isoformat(),
        "hardware": {"device": str(dev), "cpu": env["cpu"], "threads": args.threads, "gpu": env["gpu"]},
        "torch": env["torch"],
        "note": "interleaved rounds after one warm-up call each (first_call_s includes torch.compile); medians",
        "source": "resnet50 (random weights)",
        "image_size": args.size,
        "batch": args.batch,
        "mi_steps": args.mi_steps,
        "rows": rows,
        "cap": cap,
        "native_bf16": native_bf16,
        "skipped": {v: "no native bf16 on this CPU (see bf16_probe); --force-bf16 times it" for v in skipped},
        "bf16_probe": probe,
        "targets": {"cpu_bf16_speedup": 6.0, "gpu_speedup": 10.0},
        "gpu_measured": dev.type == "cuda",
        "storage": {
            "esma_params": gen_params,
            "ttp_params_each": ttp,
            "num_targets": args.targets,
            "esma_mib_fp32": gen_params * 4 / 2**20,
            "ttp_total_mib_fp32": args.targets * ttp * 4 / 2**20,
            "storage_ratio_pct": 100.0 * gen_params / (args.targets * ttp),
            "paper_storage_ratio_pct": 5.0,
        },
    }
    for r in rows:
        print(f"{r['variant']:<20} {r['s_per_batch_median']:8.3f} s/batch  x{r['speedup_vs_mifgsm_fp32'] or 0:5.2f}"
              f"  {r['resnet50_forwards'] or 0:6.2f} R50 fwd  (first call {r['first_call_s']:.1f} s)")  # fmt: skip
    write_json(res, args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
