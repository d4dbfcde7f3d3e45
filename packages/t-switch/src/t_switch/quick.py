"""Quick reproduction (spec §8): digits, four input domains sharing one label space.

A weak "pre-trained" generalist MLP (trained one epoch on the union of the original, vertically
flipped and the four task domains, like a zero-shot CLIP) is fine-tuned per domain with a frozen shared
head (like CLIP zero-shot heads). We compare the pre-trained model, Individual, Task Arithmetic
(alpha grid), static/dynamic baselines, sparse-only vs T-Switch over drop ratios (the pulse curve) and
Auto-Switch, and check the spec's asserted directions as claims computed from the numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from papers_shared.data import load_digits_tensors, stratified_split
from papers_shared.device import seed_everything
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot
from t_switch.config import AutoSwitchConfig, BaselineConfig, QuickConfig, SwitchConfig
from t_switch.experiment import run_merging
from t_switch.task_vector import task_vector

__all__ = ["DOMAINS", "build_claims", "digits_domains", "quick_reproduction", "run_seed"]

DOMAINS = ("hflip", "invert", "permute", "rot90")


def digits_domains(seed: int = 0) -> dict:
    """``{"train": {domain: (x, y)}, "test": {...}}`` with x flattened to 64 features; the pixel
    permutation is fixed (seed 0) so all runs share the domains."""
    x, y = load_digits_tensors()  # [N, 1, 8, 8] in [0, 1]
    tr, te = stratified_split(y, test_frac=0.3, seed=0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1234))
    fns = {
        "original": lambda a: a,
        "vflip": lambda a: a.flip(-2),
        "hflip": lambda a: a.flip(-1),
        "invert": lambda a: 1.0 - a,
        "permute": lambda a: a.reshape(a.shape[0], -1)[:, perm].reshape(a.shape),
        "rot90": lambda a: torch.rot90(a, 1, (-2, -1)),
    }
    out = {}
    for split, idx in (("train", tr), ("test", te)):
        out[split] = {d: (f(x[idx]).reshape(len(idx), -1).contiguous(), y[idx]) for d, f in fns.items()}
    return out


class DigitsMLP(nn.Module):
    """Body 64 -> h -> h -> 64 (ReLU) and a linear head 64 -> 10 (spec §8)."""

    def __init__(self, hidden: int = 512, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def forward(self, x):
        return self.head(self.body(x))


def _train(model, params, x, y, epochs, lr, batch_size, gen):
    opt = torch.optim.Adam(params, lr=lr, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            loss_fn(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()


def run_seed(seed: int, cfg: QuickConfig, data: dict | None = None) -> dict:
    """Train the generalist and the four specialists, then run every method through one driver."""
    import copy

    data = data or digits_domains()
    gen = seed_everything(seed)
    pre = DigitsMLP(cfg.hidden, cfg.feature_dim)
    xs = torch.cat([v[0] for v in data["train"].values()])
    ys = torch.cat([v[1] for v in data["train"].values()])
    _train(pre, pre.parameters(), xs, ys, cfg.pretrain_epochs, cfg.pretrain_lr, cfg.batch_size, gen)
    tvs = {}
    for d in DOMAINS:
        ft = copy.deepcopy(pre)
        _train(
            ft,
            ft.body.parameters(),
            *data["train"][d],
            cfg.finetune_epochs,
            cfg.finetune_lr,
            cfg.batch_size,
            gen,
        )
        tvs[d] = task_vector(pre, ft, exclude=("head",))
    mk = lambda x, y, shuffle=False: DataLoader(  # noqa: E731
        TensorDataset(x, y), batch_size=cfg.eval_batch_size, shuffle=shuffle, generator=gen
    )
    evals = {d: mk(*data["test"][d]) for d in DOMAINS}
    queries = {d: mk(*data["train"][d], shuffle=True) for d in DOMAINS}
    sw_cfg = SwitchConfig(drop_ratio=cfg.auto_ratio, group_size=cfg.group_size, exclude=["head"])
    auto_cfg = AutoSwitchConfig(k=cfg.knn_k, n_query=cfg.n_query, mode="soft", granularity="batch")
    base_cfg = BaselineConfig(methods=["individual", *cfg.baselines])
    res = run_merging(
        pre, tvs, evals, sw_cfg, auto_cfg, base_cfg,
        stages=["pretrained", "baselines", "auto_switch", "storage", "pulse"],
        query_loaders=queries, feature_fn=pre.body, pulse_ratios=cfg.ratios,
    )  # fmt: skip
    out = {"pretrained": res["pretrained"]["avg"], "individual": res["individual"]["avg"]}
    for b in cfg.baselines:
        out[b] = res[b]["avg"]
    for a in cfg.ta_alphas:
        ta = run_merging(
            pre,
            tvs,
            evals,
            sw_cfg,
            auto_cfg,
            BaselineConfig(methods=["task_arithmetic"], ta_alpha=a),
            stages=["baselines"],
        )
        out[f"task_arithmetic@{a}"] = ta["task_arithmetic"]["avg"]
    out["task_arithmetic_best"] = max(out[f"task_arithmetic@{a}"] for a in cfg.ta_alphas)
    for i, r in enumerate(cfg.ratios):
        out[f"sparse@{r}"] = sum(res["pulse"][d][i]["sparse"] for d in DOMAINS) / len(DOMAINS)
        out[f"t_switch@{r}"] = sum(res["pulse"][d][i]["binary"] for d in DOMAINS) / len(DOMAINS)
    out["auto_switch"] = res["auto_switch"]["avg"]
    out["auto_switch_routing"] = sum(res["auto_switch"][f"routing_{d}"] for d in DOMAINS) / len(DOMAINS)
    out["storage_pct_fp32"] = res["storage"]["pct_fp32_bits"]
    out["storage_bits_per_entry"] = res["storage"]["bits_per_entry"]
    return out


def build_claims(m: dict, cfg: QuickConfig) -> list[Claim]:
    """The spec §8 directions, on seed-averaged numbers."""
    r5 = m["t_switch@0.5"]
    claims = [
        Claim.compare("T-Switch(r=0.5) within 2 points of Individual", "t_switch@0.5", r5, "individual", m["individual"], ">=", -2.0),
        Claim.compare("dropping redundant entries helps the binarized vector", "t_switch@0.5", r5, "t_switch@0.0", m["t_switch@0.0"], ">"),
        Claim.compare("T-Switch(r=0.5) >= best Task Arithmetic + 5", "t_switch@0.5", r5, "task_arithmetic_best", m["task_arithmetic_best"], ">=", 5.0),
        Claim.compare("Auto-Switch > best Task Arithmetic + 2", "auto_switch", m["auto_switch"], "task_arithmetic_best", m["task_arithmetic_best"], ">", 2.0),
        Claim.compare("Auto-Switch <= T-Switch + 0.5", "auto_switch", m["auto_switch"], f"t_switch@{cfg.auto_ratio}", m[f"t_switch@{cfg.auto_ratio}"], "<=", 0.5),
    ]  # fmt: skip
    for r in cfg.ratios:
        if r >= 0.5:
            claims.append(
                Claim.compare(f"binarized >= sparse-only - 0.5 at r={r}", f"t_switch@{r}", m[f"t_switch@{r}"], f"sparse@{r}", m[f"sparse@{r}"], ">=", -0.5)
            )  # fmt: skip
    claims.append(
        Claim.compare(f"storage (g={cfg.group_size}, r={cfg.auto_ratio}) < 6 % of fp32", "t_switch storage %", m["storage_pct_fp32"], "6 %", 6.0, "<")
    )  # fmt: skip
    return claims


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: QuickConfig | None = None) -> QuickResult:
    """``uv run reproduce t-switch``: 3 seeds of the digits experiment, JSON claims and two plots
    (``quick=False``: 5 seeds)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg is None:
        cfg = QuickConfig() if quick else QuickConfig(seeds=[0, 1, 2, 3, 4])
    data = digits_domains()
    per_seed = [run_seed(s, cfg, data) for s in cfg.seeds]
    keys = list(per_seed[0])
    mean = {k: sum(p[k] for p in per_seed) / len(per_seed) for k in keys}
    std = {k: (sum((p[k] - mean[k]) ** 2 for p in per_seed) / max(len(per_seed) - 1, 1)) ** 0.5 for k in keys}
    claims = build_claims(mean, cfg)
    pulse = out_dir / "t-switch_pulse.png"
    line_plot(
        {"sparse only": [mean[f"sparse@{r}"] for r in cfg.ratios], "binarized (T-Switch)": [mean[f"t_switch@{r}"] for r in cfg.ratios]},
        pulse, "drop ratio r", "mean accuracy over 4 domains (%)", f"Pulse curve (digits, {len(cfg.seeds)} seeds)", x=cfg.ratios,
        std={"sparse only": [std[f"sparse@{r}"] for r in cfg.ratios], "binarized (T-Switch)": [std[f"t_switch@{r}"] for r in cfg.ratios]},
    )  # fmt: skip
    methods = [
        "pretrained",
        "task_arithmetic_best",
        *cfg.baselines,
        "individual",
        f"t_switch@{cfg.auto_ratio}",
        "auto_switch",
    ]
    bars = out_dir / "t-switch_methods.png"
    bar_plot({k: (mean[k], std[k]) for k in methods}, bars, "mean accuracy (%)", "Digits, 4 domains")
    failed = [c.claim for c in claims if not c.holds]
    notes = (
        f"Seeds {cfg.seeds}; MLP 64-{cfg.hidden}-{cfg.hidden}-{cfg.feature_dim} generalist, per-domain fine-tuning "
        f"of the body; Auto-Switch: soft batch-mean weights, k={cfg.knn_k}, {cfg.n_query} query samples per task, "
        f"features = pre-trained body output; routing weight on the right task {mean['auto_switch_routing']:.1f} %. "
        + (f"Claims that do not hold: {failed}." if failed else "All claims hold.")
    )
    return QuickResult(
        package="t-switch",
        command="uv run reproduce t-switch",
        dataset="sklearn digits (4 input domains: hflip, invert, fixed pixel permutation, rot90)",
        seeds=list(cfg.seeds),
        metrics={"mean": mean, "std": std, "per_seed": per_seed},
        claims=claims,
        runtime_s=round(time.perf_counter() - t0, 2),
        plots=[pulse.name, bars.name],
        notes=notes,
    )
