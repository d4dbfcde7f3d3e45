"""Quick reproduction on sklearn digits, offline (ours: a small stand-in for the paper's ImageNet tables).

The sizes come from the shipped ``quick`` config (``configs/quick.yaml``, section ``quick``).
Per seed: a tiny CNN source and two victims (a wider CNN, an MLP) trained on 70 % of digits.
(a) premise: cross-model loss gap / prediction agreement per source-loss bin (easy -> hard);
(b) anchor ablation: targeted MI-FGSM (50 steps, eps 0.2) matching easy vs random vs hard anchors
    (q = 5) and plain CE, scored on the victims;
(c) tiny ESMA generator (ch 16, ch_mult (1, 2); stage 1 then 300 stage-2 steps, eps 0.2) trained with
    the easy bank vs with the hard bank (same initialisation, data order, target draws, learning rate
    and steps), scored on the victims, and the easy one again with bf16 inference;
plus the storage ratio of one default ESMA generator over 10 default TTP generators (the paper's ~5 %).
Claims are stated in :func:`build_claims` before measuring; nothing is tuned towards the expected ordering.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from papers_shared.attacks import success_rate, tiny_cnn, tiny_mlp
from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.device import seed_everything
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot

from .analysis import anchor_ablation, consistency_vs_easiness, targeted_pairs
from .attack import EsmaAttack
from .baselines.ttp import TTPGenerator
from .config import EsmaExperimentConfig, QuickConfig
from .data import digits_split, train_digits_classifier
from .generator import EsmaGenerator
from .screening import screen_banks
from .trainer import EsmaTrainer, pretrain_target_embeddings

__all__ = ["aggregate", "build_claims", "quick_config", "quick_reproduction", "run_seed", "storage_ratio"]

KINDS = ("easy", "random", "hard")


def storage_ratio(num_targets: int = 10) -> dict[str, float]:
    """Parameters / fp32 MiB of one default ESMA generator vs ``num_targets`` default TTP generators."""
    esma = EsmaGenerator(num_targets).num_parameters()
    ttp = TTPGenerator().num_parameters()
    return {
        "esma_params": esma,
        "ttp_params": ttp,
        "esma_mib": esma * 4 / 2**20,
        "ttp_total_mib": num_targets * ttp * 4 / 2**20,
        "ratio_pct": 100.0 * esma / (num_targets * ttp),
    }


def _victim_mean(row: dict, victims) -> float:
    return 100.0 * sum(row[v] for v in victims) / len(victims)


def run_seed(seed: int, cfg: QuickConfig, data: dict | None = None) -> dict:
    data = data or digits_split(cfg.size)
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    seed_everything(seed)
    shape = (3, cfg.size, cfg.size)
    source = tiny_cnn(10, 3, width=cfg.source_width, seed=10 * seed)
    victims = {
        "cnn_wide": tiny_cnn(10, 3, width=cfg.victim_width, seed=10 * seed + 1),
        "mlp": tiny_mlp(shape, 10, hidden=cfg.mlp_hidden, seed=10 * seed + 2),
    }
    for i, m in enumerate([source, *victims.values()]):
        train_digits_classifier(m, xtr, ytr, epochs=cfg.model_epochs, lr=cfg.model_lr, seed=10 * seed + i)
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, m in {"source": source, **victims}.items():
            out[f"clean_acc_{name}"] = 100.0 * float((m(xte).argmax(1) == yte).float().mean())

    # (a) premise: consistency vs easiness on the test split
    test_loader = DataLoader(TensorDataset(xte, yte), batch_size=512)
    cons = consistency_vs_easiness([source, *victims.values()], test_loader, 0, cfg.n_bins)
    for i in range(cfg.n_bins):
        out[f"gap_bin{i}"] = cons["loss_gap"][i]
        out[f"agree_bin{i}"] = 100.0 * cons["agreement"][i]

    # banks on the training split
    train_ds = TensorDataset(xtr, ytr)
    classes = list(range(10))
    banks = screen_banks(source, train_ds, classes, q=cfg.q, kinds=KINDS, seed=seed)
    out["easy_fallback_classes"] = float(len(banks["easy"].fallback_used))

    # (b) anchor ablation with MI-FGSM
    xa, ta = targeted_pairs(xte, yte, classes, cfg.attack_images or None)
    abl = anchor_ablation(
        source, victims, banks, xa, ta, eps=cfg.attack_eps, alpha=cfg.attack_alpha, steps=cfg.attack_steps,
        seed=seed,
    )  # fmt: skip
    for kind, row in abl.items():
        out[f"mi_{kind}_victims"] = _victim_mean(row, victims)
        out[f"mi_{kind}_source"] = 100.0 * row["source"]

    # (c) tiny ESMA generators: easy bank vs hard bank, same init / data order / target draws
    if seed not in cfg.gen_seeds:
        return out
    init = EsmaGenerator(10, ch=cfg.gen_ch, ch_mult=cfg.gen_ch_mult)
    pretrain_target_embeddings(init, banks["easy"].class_means, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr)
    state = {k: v.clone() for k, v in init.state_dict().items()}
    for kind in ("easy", "hard"):
        gen = EsmaGenerator(10, ch=cfg.gen_ch, ch_mult=cfg.gen_ch_mult)
        gen.load_state_dict(state)
        trainer = EsmaTrainer(gen, source, banks[kind], eps_train=cfg.eps_gen, lr=cfg.gen_lr, seed=seed)
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_ds, batch_size=cfg.gen_batch, shuffle=True, generator=g, drop_last=True)
        epochs = -(-cfg.gen_steps // len(loader))
        trainer.fit(loader, epochs=epochs, max_steps=cfg.gen_steps, progress=False)
        precisions = ("fp32", "bf16") if kind == "easy" and cfg.precision_check else ("fp32",)
        for precision in precisions:
            atk = EsmaAttack(gen, classes, eps=cfg.eps_gen, precision=precision)
            with warnings.catch_warnings():  # an accuracy check; the speed of bf16 is the benchmark's
                warnings.filterwarnings("ignore", message=".*native bf16")
                adv = torch.cat([atk(xa[i : i + 512], ta[i : i + 512]) for i in range(0, len(xa), 512)])
            row = {
                "source": success_rate(source, adv, ta, True),
                **{n: success_rate(v, adv, ta, True) for n, v in victims.items()},
            }
            name = kind if precision == "fp32" else f"{kind}_{precision}"
            out[f"gen_{name}_victims"] = _victim_mean(row, victims)
            out[f"gen_{name}_source"] = 100.0 * row["source"]
        out[f"gen_{kind}_final_loss"] = sum(trainer.history[-20:]) / len(trainer.history[-20:])
    return out


def aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and sample std of every metric over the seeds that measured it."""
    keys = list(dict.fromkeys(k for p in per_seed for k in p))
    mean, std = {}, {}
    for k in keys:
        vals = [p[k] for p in per_seed if k in p]
        mean[k] = sum(vals) / len(vals)
        std[k] = (sum((v - mean[k]) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5
    return mean, std


def _paired(claim: str, per_seed: list[dict], seeds: list[int], method: str, baseline: str, op: str,
            margin: float = 0.0, min_wins: int | None = None) -> Claim:  # fmt: skip
    """A claim over the seeds that measured both keys: paired per-seed values when there are >= 3 of
    them (``Claim.paired_compare``), a plain comparison of the one or two values otherwise."""
    rows = [(s, p) for s, p in zip(seeds, per_seed) if method in p and baseline in p]
    mv, bv = [p[method] for _, p in rows], [p[baseline] for _, p in rows]
    if len(rows) >= 3:
        return Claim.paired_compare(claim, method, mv, baseline, bv, op=op, margin=margin,
                                    min_wins=min_wins, seeds=[s for s, _ in rows])  # fmt: skip
    return Claim.compare(claim, method, sum(mv) / len(mv), baseline, sum(bv) / len(bv), op=op, margin=margin)


def build_claims(per_seed: list[dict], cfg: QuickConfig, storage: dict) -> list[Claim]:
    """The claims, stated before measuring, checked on the measured numbers.

    Multi-seed claims are paired over the seeds (mean difference, and a majority of per-seed wins so a
    mean moved by one seed does not count). Every comparison is at equal budgets: the anchor kinds share
    the attack, steps, step size and eps; the easy and hard generators share initialisation, data order,
    target draws, learning rate and steps; bf16 and fp32 score the same trained generator.
    """
    last = cfg.n_bins - 1
    seeds = list(cfg.seeds)
    n = len(seeds)
    gen_n = len([p for p in per_seed if "gen_easy_victims" in p])
    majority = n // 2 + 1
    gen_text = f"{gen_n} seed{'s' if gen_n != 1 else ''}"
    return [
        _paired("premise: cross-model loss gap smaller on the easiest source-loss bin than on the hardest",
                per_seed, seeds, "gap_bin0", f"gap_bin{last}", "<", min_wins=n),
        _paired("premise: prediction agreement higher on the easiest source-loss bin than on the hardest",
                per_seed, seeds, "agree_bin0", f"agree_bin{last}", ">", min_wins=n),
        _paired("MI-FGSM (same steps, alpha, eps): easy-anchor >= random-anchor matching, victim targeted success",
                per_seed, seeds, "mi_easy_victims", "mi_random_victims", ">=", min_wins=majority),
        _paired("MI-FGSM (same steps, alpha, eps): random-anchor >= hard-anchor matching, victim targeted success",
                per_seed, seeds, "mi_random_victims", "mi_hard_victims", ">=", min_wins=majority),
        _paired(f"tiny ESMA generator (same init, lr, steps; {gen_text}): easy bank > hard bank, victim success",
                per_seed, seeds, "gen_easy_victims", "gen_hard_victims", ">", min_wins=gen_n // 2 + 1),
        _paired(f"bf16 generator inference keeps victim targeted success within 1 point of fp32 ({gen_text})",
                per_seed, seeds, "gen_easy_bf16_victims", "gen_easy_victims", ">=", margin=-1.0),
        Claim.compare("storage: one ESMA generator < 6 % of 10 TTP generators (paper: ~5 %)",
                      "esma / 10 TTP (%)", storage["ratio_pct"], "6 %", 6.0, "<"),
    ]  # fmt: skip


def quick_config(quick: bool = True) -> QuickConfig:
    """The ``quick`` section of the shipped ``quick`` config (``quick=False``: its :meth:`~QuickConfig.full`)."""
    cfg = load_config(EsmaExperimentConfig, resolve_config("esma", "quick")).quick
    return cfg if quick else cfg.full()


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: QuickConfig | None = None) -> QuickResult:
    """``esma quick`` / ``uv run reproduce esma``: the digits experiment over ``cfg.seeds`` (default: the
    shipped ``quick`` config; ``quick=False``: its larger variant)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg is None:
        cfg = quick_config(quick)
    data = digits_split(cfg.size)
    per_seed = [run_seed(s, cfg, data) for s in cfg.seeds]
    mean, std = aggregate(per_seed)
    storage = storage_ratio()
    claims = build_claims(per_seed, cfg, storage)

    bars = out_dir / "esma_anchor_kinds.png"
    groups = {
        "MI-FGSM (victims)": {k: (mean[f"mi_{k}_victims"], std[f"mi_{k}_victims"]) for k in (*KINDS, "ce")},
        "MI-FGSM (source)": {k: (mean[f"mi_{k}_source"], std[f"mi_{k}_source"]) for k in (*KINDS, "ce")},
    }
    bar_plot({}, bars, "targeted success (%)", f"Digits: anchor kind ({len(cfg.seeds)} seeds)", groups=groups)
    gen_bars = out_dir / "esma_generator_easy_vs_hard.png"
    bar_plot(
        {},
        gen_bars,
        "targeted success (%)",
        "Tiny ESMA generator: easy vs hard bank",
        groups={
            "victims": {k: (mean[f"gen_{k}_victims"], std[f"gen_{k}_victims"]) for k in ("easy", "hard")},
            "source": {k: (mean[f"gen_{k}_source"], std[f"gen_{k}_source"]) for k in ("easy", "hard")},
        },
    )
    premise = out_dir / "esma_premise.png"
    bins = list(range(cfg.n_bins))
    line_plot(
        {
            "loss gap |l_A - l_B| (x10)": [10 * mean[f"gap_bin{i}"] for i in bins],
            "prediction agreement (%)": [mean[f"agree_bin{i}"] for i in bins],
        },
        premise,
        "source-loss bin (0 = easiest)",
        "value",
        "Premise: cross-model consistency vs easiness",
        x=bins,
        std={
            "loss gap |l_A - l_B| (x10)": [10 * std[f"gap_bin{i}"] for i in bins],
            "prediction agreement (%)": [std[f"agree_bin{i}"] for i in bins],
        },
    )
    failed = [c.claim for c in claims if not c.holds]
    notes = (
        f"Seeds {cfg.seeds}; digits 3x{cfg.size}x{cfg.size}, 70/30 split; source tiny CNN (width "
        f"{cfg.source_width}), victims CNN (width {cfg.victim_width}) and MLP ({cfg.mlp_hidden}); MI-FGSM "
        f"{cfg.attack_steps} steps eps {cfg.attack_eps} alpha {cfg.attack_alpha}, {cfg.attack_images} test images "
        f"per target; q={cfg.q}; tiny generator ch {cfg.gen_ch} ch_mult {cfg.gen_ch_mult}, stage 1 "
        f"{cfg.pretrain_steps} steps, stage 2 {cfg.gen_steps} steps batch {cfg.gen_batch} lr {cfg.gen_lr} on seeds "
        f"{cfg.gen_seeds}; bf16 check {cfg.precision_check}. "
        + (f"Claims that do not hold: {failed}." if failed else "All claims hold.")
    )
    return QuickResult(
        package="esma",
        command="uv run reproduce esma",
        dataset=f"sklearn digits (3x{cfg.size}x{cfg.size}, 10 classes = 10 targets)",
        seeds=list(cfg.seeds),
        metrics={"mean": mean, "std": std, "per_seed": per_seed, "storage": storage},
        claims=claims,
        runtime_s=round(time.perf_counter() - t0, 2),
        plots=[bars.name, gen_bars.name, premise.name],
        notes=notes,
    )
