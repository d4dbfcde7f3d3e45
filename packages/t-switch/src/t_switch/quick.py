"""Quick reproduction: the digits table, four input domains sharing one label space (ours).

A weak "pre-trained" generalist MLP (one epoch on the union of the original, vertically flipped and the
four task domains, like a zero-shot CLIP) is fine-tuned per domain with a frozen shared head (like CLIP
zero-shot heads). Per seed we measure the pre-trained model (floor), Individual (upper bound), Task
Arithmetic (alpha grid), static/dynamic baselines, sparse-only vs T-Switch over drop ratios (the pulse
curve) and Auto-Switch twice: with the official protocol's router (features = the pre-trained model's
output, k-NN vote shares averaged over the batch) and with the router chosen on a held-out validation
split among features, k and temperatures (ours). The claims are fixed in :func:`build_claims` before
measuring and computed from the per-seed numbers (paired over seeds). The settings come from the shipped
``quick`` config, the one source of truth of this run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from papers_shared.cli import resolve_config
from papers_shared.config import load_config
from papers_shared.results import Claim, QuickResult, bar_plot, line_plot
from t_switch.auto_switch import routing_report, select_router
from t_switch.config import AutoSwitchConfig, BaselineConfig, DigitsConfig, ExperimentConfig, SwitchConfig
from t_switch.data import DOMAINS, digits_domains
from t_switch.experiment import run_merging
from t_switch.router import KNNRouter
from t_switch.task_vector import task_vector
from t_switch.trainer import train_classifier

__all__ = ["DigitsMLP", "build_claims", "load_quick_config", "quick_reproduction", "run_digits", "run_seed"]


class DigitsMLP(nn.Module):
    """Body 64 -> h -> h -> d (ReLU) and a linear head d -> 10."""

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

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: Tensor, which: str = "body") -> Tensor:
        """A retrieval feature: the input, the first / second hidden layer, or the body output."""
        depth = {"input": 0, "hidden1": 2, "hidden2": 4, "body": 6}[which]
        return self.body[:depth](x) if depth else x


def load_quick_config() -> DigitsConfig:
    """The shipped ``quick`` config's digits section."""
    return load_config(ExperimentConfig, resolve_config("t_switch", "quick")).digits


def _query(data: dict, cfg: DigitsConfig, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """The first ``n_query`` training samples of each domain in a seeded order (the official query set
    is the first samples the shuffled training loader yields)."""
    out = {}
    for i, d in enumerate(DOMAINS):
        x, y = data["train"][d]
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1000 * seed + i))
        out[d] = (x[perm[: cfg.n_query]], y[perm[: cfg.n_query]])
    return out


def _labelled(split: dict, feat) -> tuple[Tensor, Tensor]:
    xs = [feat(split[d][0]) for d in DOMAINS]
    return torch.cat(xs), torch.cat([torch.full((x.shape[0],), i) for i, x in enumerate(xs)])


def run_seed(seed: int, cfg: DigitsConfig, data: dict | None = None) -> tuple[dict, dict]:
    """Train the generalist and the four specialists, run every method through one driver.

    Returns ``(metrics, router)``: numbers of this seed and the router measurements (validation grid and
    the chosen feature, k and temperature).
    """
    data = data or digits_domains(cfg.val_fraction)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initialisation of the MLP
    pre = DigitsMLP(cfg.hidden, cfg.feature_dim)
    xs = torch.cat([v[0] for v in data["train"].values()])
    ys = torch.cat([v[1] for v in data["train"].values()])
    train_classifier(pre, pre.parameters(), xs, ys, cfg.pretrain_epochs, cfg.pretrain_lr, cfg.batch_size, gen)
    tvs = {}
    for d in DOMAINS:
        ft = copy.deepcopy(pre)
        x, y = data["train"][d]
        train_classifier(
            ft, ft.body.parameters(), x, y, cfg.finetune_epochs, cfg.finetune_lr, cfg.batch_size, gen
        )
        tvs[d] = task_vector(pre, ft, exclude=("head",))

    def loaders(split):
        return {
            d: DataLoader(TensorDataset(*data[split][d]), batch_size=cfg.eval_batch_size) for d in DOMAINS
        }

    evals, vals = loaders("test"), loaders("val")
    query = _query(data, cfg, seed)
    sw_cfg = SwitchConfig(drop_ratio=cfg.auto_ratio, group_size=cfg.group_size, exclude=["head"])
    auto_cfg = AutoSwitchConfig(k=cfg.knn_k, n_query=cfg.n_query, mode="soft", granularity="batch")
    res = run_merging(
        pre, tvs, evals, sw_cfg, auto_cfg, BaselineConfig(methods=["individual", *cfg.baselines]),
        stages=["pretrained", "baselines", "auto_switch", "storage", "pulse"],
        query_loaders={d: [q] for d, q in query.items()}, feature_fn=pre.body, pulse_ratios=cfg.ratios,
    )  # fmt: skip
    m = {"pretrained": res["pretrained"]["avg"], "individual": res["individual"]["avg"]}
    for b in cfg.baselines:
        m[b] = res[b]["avg"]
    for a in cfg.ta_alphas:
        ta = run_merging(
            pre,
            tvs,
            evals,
            sw_cfg,
            auto_cfg,
            BaselineConfig(methods=["task_arithmetic"], ta_alpha=a),
            ["baselines"],
        )
        m[f"task_arithmetic@{a}"] = ta["task_arithmetic"]["avg"]
    m["task_arithmetic_best"] = max(m[f"task_arithmetic@{a}"] for a in cfg.ta_alphas)
    for i, r in enumerate(cfg.ratios):
        m[f"sparse@{r}"] = sum(res["pulse"][d][i]["sparse"] for d in DOMAINS) / len(DOMAINS)
        m[f"t_switch@{r}"] = sum(res["pulse"][d][i]["binary"] for d in DOMAINS) / len(DOMAINS)
    m["auto_switch_protocol"] = res["auto_switch"]["avg"]
    m["storage_pct_fp32"] = res["storage"]["pct_fp32_bits"]
    m["storage_bits_per_entry"] = res["storage"]["bits_per_entry"]

    # the router: feature and k chosen on the validation split, then the temperature (ours)
    feats = {f: (lambda x, f=f: pre.features(x, f)) for f in cfg.router_features}
    qsets = {f: _labelled({d: (q[0], None) for d, q in query.items()}, fn) for f, fn in feats.items()}
    valsets = {f: _labelled(data["val"], fn) for f, fn in feats.items()}
    best, grid = select_router(qsets, valsets, cfg.router_ks)
    router = KNNRouter(best["k"]).fit(*qsets[best["feature"]])
    temps = []
    for temp in cfg.router_temperatures:
        a = AutoSwitchConfig(k=best["k"], n_query=cfg.n_query, temperature=temp)
        r = run_merging(pre, tvs, vals, sw_cfg, a, BaselineConfig(methods=[]), ["auto_switch"],
                        router=router, feature_fn=feats[best["feature"]])  # fmt: skip
        temps.append({"temperature": temp, "val_accuracy": r["auto_switch"]["avg"]})
    best_t = max(temps, key=lambda row: (row["val_accuracy"], -temps.index(row)))["temperature"]
    a = AutoSwitchConfig(k=best["k"], n_query=cfg.n_query, temperature=best_t)
    sel = run_merging(pre, tvs, evals, sw_cfg, a, BaselineConfig(methods=[]), ["auto_switch"],
                      router=router, feature_fn=feats[best["feature"]])  # fmt: skip
    m["auto_switch"] = sel["auto_switch"]["avg"]
    test = routing_report(
        router, *_labelled(data["test"], feats[best["feature"]]), batch_size=cfg.eval_batch_size
    )
    m["routing_sample_accuracy"] = test["sample_accuracy"]
    m["routing_batch_accuracy"] = test["batch_accuracy"]
    m["routing_weight_on_task"] = sum(sel["auto_switch"][f"routing_{d}"] for d in DOMAINS) / len(DOMAINS)
    proto_router = KNNRouter(cfg.knn_k).fit(*qsets["body"]) if "body" in qsets else None
    if proto_router is not None:
        proto = routing_report(
            proto_router, *_labelled(data["test"], feats["body"]), batch_size=cfg.eval_batch_size
        )
        m["routing_sample_accuracy_protocol"] = proto["sample_accuracy"]
    m["routing_weight_on_task_protocol"] = sum(res["auto_switch"][f"routing_{d}"] for d in DOMAINS) / len(
        DOMAINS
    )
    chosen = {"feature": best["feature"], "k": best["k"], "temperature": best_t}
    return m, {"chosen": chosen, "validation_grid": grid, "validation_temperatures": temps}


def build_claims(per_seed: list[dict], cfg: DigitsConfig, seeds: list[int]) -> list[Claim]:
    """The claims, fixed before measuring, on per-seed numbers (paired over seeds).

    Margins: the test split holds 135 images per domain, so one image moves a domain's accuracy by
    0.74 points and the 4-domain mean by 0.19; the non-inferiority margin ``paired_margin`` (0.5 points,
    under 3 of the 540 test images) is below the seed-to-seed spread of either method (1-2 points).
    """
    n = len(per_seed)

    def col(key):
        return [p[key] for p in per_seed]

    def paired(claim, a, b, op=">", margin=0.0, min_wins=None, av=None, bv=None):
        return Claim.paired_compare(claim, a, av if av is not None else col(a), b, bv if bv is not None else col(b),
                                    op=op, margin=margin, min_wins=min_wins, seeds=seeds)  # fmt: skip

    hi = [r for r in cfg.ratios if r >= 0.5]
    gap = lambda p, rs: sum(p[f"t_switch@{r}"] - p[f"sparse@{r}"] for r in rs) / len(rs)  # noqa: E731
    X = cfg.paired_margin
    wins = max(n - 1, 1)
    claims = [
        paired("T-Switch(r=0.5) within 2 points of Individual", "t_switch@0.5", "individual", ">=", -2.0),
        paired("dropping redundant entries helps the binarized vector: T-Switch(r=0.5) > T-Switch(r=0)",
               "t_switch@0.5", "t_switch@0.0", ">", 0.0, wins),
        paired("T-Switch(r=0.5) >= best Task Arithmetic + 5", "t_switch@0.5", "task_arithmetic_best", ">=", 5.0, n),
        paired("binarization costs less after dropping: (binarized - sparse) at r=0.5 > at r=0",
               "gap@0.5", "gap@0.0", ">", 0.0, wins,
               [gap(p, [0.5]) for p in per_seed], [gap(p, [0.0]) for p in per_seed]),
        paired(f"binarized within {X:g} points of sparse-only (non-inferior), mean over r in {hi}",
               "t_switch(r>=0.5)", "sparse(r>=0.5)", ">=", -X, wins,
               [sum(p[f"t_switch@{r}"] for r in hi) / len(hi) for p in per_seed],
               [sum(p[f"sparse@{r}"] for r in hi) / len(hi) for p in per_seed]),
        paired(f"Auto-Switch routes >= {cfg.routing_threshold:g} % of test samples to their domain "
               "(router chosen on validation)", "routing_sample_accuracy", "threshold", ">=", 0.0, n,
               bv=[cfg.routing_threshold] * n),
        paired("Auto-Switch > best Task Arithmetic + 2", "auto_switch", "task_arithmetic_best", ">", 2.0, n),
        paired("Auto-Switch <= T-Switch + 0.5 (routing cannot beat the known task)", "auto_switch",
               f"t_switch@{cfg.auto_ratio}", "<=", 0.5),
        Claim.compare(f"storage (g={cfg.group_size}, r={cfg.auto_ratio}) < 6 % of fp32", "t_switch storage %",
                      sum(col("storage_pct_fp32")) / n, "6 %", 6.0, "<"),
    ]  # fmt: skip
    return claims


def run_digits(cfg: DigitsConfig) -> dict:
    """Every seed of the digits table: ``{"mean", "std", "per_seed", "router", "claims"}``."""
    data = digits_domains(cfg.val_fraction)
    runs = [run_seed(s, cfg, data) for s in cfg.seeds]
    per_seed = [m for m, _ in runs]
    keys = list(per_seed[0])
    n = len(per_seed)
    mean = {k: sum(p[k] for p in per_seed) / n for k in keys}
    std = {k: (sum((p[k] - mean[k]) ** 2 for p in per_seed) / max(n - 1, 1)) ** 0.5 for k in keys}
    router = _router_summary([r for _, r in runs], cfg)
    claims = build_claims(per_seed, cfg, list(cfg.seeds))
    return {"mean": mean, "std": std, "per_seed": per_seed, "router": router, "claims": claims}


def _router_summary(routers: list[dict], cfg: DigitsConfig) -> dict:
    """Validation routing accuracy per (feature, k) averaged over seeds, and each seed's choice."""
    grid: dict[str, dict] = {}
    for r in routers:
        for row in r["validation_grid"]:
            cell = grid.setdefault(
                f"{row['feature']}/k={row['k']}", {"feature": row["feature"], "k": row["k"], "rows": []}
            )
            cell["rows"].append(row)
    table = [
        {"feature": c["feature"], "k": c["k"],
         "val_sample_accuracy": sum(x["sample_accuracy"] for x in c["rows"]) / len(c["rows"]),
         "val_weight_on_task": sum(x["weight_on_task"] for x in c["rows"]) / len(c["rows"])}
        for c in grid.values()
    ]  # fmt: skip
    temps = {}
    for r in routers:
        for row in r["validation_temperatures"]:
            temps.setdefault(row["temperature"], []).append(row["val_accuracy"])
    return {
        "chosen": [r["chosen"] for r in routers],
        "validation_grid": table,
        "validation_temperatures": [
            {"temperature": t, "val_accuracy": sum(v) / len(v)} for t, v in temps.items()
        ],
        "protocol": {"feature": "body", "k": cfg.knn_k, "temperature": 1.0},
    }


def quick_reproduction(out_dir: Path, quick: bool = True, cfg: DigitsConfig | None = None) -> QuickResult:
    """``uv run reproduce t-switch``: the shipped ``quick`` config (5 seeds; ``quick=False``: 10 seeds),
    JSON claims and three plots."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg or load_quick_config()
    if not quick and cfg.seeds == load_quick_config().seeds:
        cfg = dataclasses.replace(cfg, seeds=list(range(10)))
    res = run_digits(cfg)
    mean, std = res["mean"], res["std"]
    plots = _plots(out_dir, cfg, res)
    failed = [c.claim for c in res["claims"] if not c.holds]
    chosen = sorted({f"{c['feature']}/k={c['k']}/T={c['temperature']:g}" for c in res["router"]["chosen"]})
    notes = (
        f"Seeds {cfg.seeds}; MLP 64-{cfg.hidden}-{cfg.hidden}-{cfg.feature_dim} generalist, per-domain fine-tuning "
        f"of the body; floor (pre-trained) {mean['pretrained']:.2f}, upper bound (Individual) {mean['individual']:.2f}. "
        f"Auto-Switch with the official protocol's router (body output, k={cfg.knn_k}, soft batch mean): "
        f"{mean['auto_switch_protocol']:.2f}, weight on the right domain {mean['routing_weight_on_task_protocol']:.1f} %, "
        f"per-sample routing {mean.get('routing_sample_accuracy_protocol', float('nan')):.1f} %. Router chosen on the "
        f"validation split (feature/k/temperature, per seed): {', '.join(chosen)}; test routing {mean['routing_sample_accuracy']:.1f} % "
        f"per sample, {mean['routing_batch_accuracy']:.1f} % per batch; Auto-Switch {mean['auto_switch']:.2f}. "
        + (f"Claims that do not hold: {failed}." if failed else "All claims hold.")
    )
    return QuickResult(
        package="t-switch",
        command="uv run reproduce t-switch",
        dataset="sklearn digits (4 input domains: hflip, invert, fixed pixel permutation, rot90)",
        seeds=list(cfg.seeds),
        metrics={"mean": mean, "std": std, "per_seed": res["per_seed"], "router": res["router"]},
        claims=res["claims"],
        runtime_s=round(time.perf_counter() - t0, 2),
        plots=plots,
        notes=notes,
    )


def _plots(out_dir: Path, cfg: DigitsConfig, res: dict) -> list[str]:
    mean, std = res["mean"], res["std"]
    pulse = out_dir / "t-switch_pulse.png"
    line_plot(
        {"sparse only": [mean[f"sparse@{r}"] for r in cfg.ratios], "binarized (T-Switch)": [mean[f"t_switch@{r}"] for r in cfg.ratios]},
        pulse, "drop ratio r", "mean accuracy over 4 domains (%)", f"Pulse curve (digits, {len(cfg.seeds)} seeds)", x=cfg.ratios,
        std={"sparse only": [std[f"sparse@{r}"] for r in cfg.ratios], "binarized (T-Switch)": [std[f"t_switch@{r}"] for r in cfg.ratios]},
    )  # fmt: skip
    methods = ["pretrained", "task_arithmetic_best", *cfg.baselines, "individual", f"t_switch@{cfg.auto_ratio}",
               "auto_switch_protocol", "auto_switch"]  # fmt: skip
    bars = out_dir / "t-switch_methods.png"
    bar_plot({k: (mean[k], std[k]) for k in methods}, bars, "mean accuracy (%)", "Digits, 4 domains")
    router = out_dir / "t-switch_router.png"
    grid = res["router"]["validation_grid"]
    feats = list(dict.fromkeys(row["feature"] for row in grid))
    line_plot(
        {f: [row["val_sample_accuracy"] for row in grid if row["feature"] == f] for f in feats},
        router, "k (neighbours)", "validation routing accuracy (%)", "Router: feature and k (validation split)",
        x=[row["k"] for row in grid if row["feature"] == feats[0]],
    )  # fmt: skip
    return [pulse.name, bars.name, router.name]
