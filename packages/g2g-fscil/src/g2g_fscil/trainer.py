"""Training and evaluation pipeline (spec §3.6): pre-train -> meta-train -> incremental sessions.

One trainer serves G2G, V2V (C-FSCIL modes 1-3), NCM and TEEN, so the comparison is fair: all methods
share the same pre-trained backbone, the same split and the same evaluator (top-1 over all seen classes).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm

from g2g_fscil.augment import augment_batch
from g2g_fscil.baselines.ncm import NCMClassifier
from g2g_fscil.config import ExperimentConfig, G2GConfig
from g2g_fscil.data import FSCILData, gather
from g2g_fscil.graphs import collapse_index, cosine_adjacency, represent
from g2g_fscil.interaction import weightings
from g2g_fscil.losses import cag2g_loss, cosine_align_loss, episode_bce_loss, lgp_loss, nudging_loss
from g2g_fscil.memory import class_stats, merge_stats
from g2g_fscil.model import G2GNet
from papers_shared.checkpoints import CheckpointManager
from papers_shared.device import get_device, seed_everything
from papers_shared.metrics import (
    AccuracyMatrix,
    RunReport,
    base_novel_accuracy,
    harmonic_mean,
    session_accuracy,
)

__all__ = [
    "build_model",
    "evaluate",
    "incremental_session",
    "method_config",
    "metatrain",
    "pretrain",
    "run_fscil",
    "write_base_memory",
]


def build_model(data: FSCILData, mcfg: G2GConfig) -> G2GNet:
    if mcfg.in_channels != data.in_channels:
        mcfg = dataclasses.replace(mcfg, in_channels=data.in_channels)
    return G2GNet(
        mcfg, num_classes=len(data.base_classes), image_size=data.image_size, input_norm=data.input_norm
    )


def method_config(mcfg: G2GConfig, method: str, v2v_mode: int = 1) -> G2GConfig:
    """The model config a method runs with: ``v2v`` is C-FSCIL (no LGP/CAG2G) in incremental mode 1
    (no retraining), 2 (retrain + bipolarise) or 3 (retrain + nudging)."""
    if method != "v2v":
        return mcfg
    retrain = mcfg.retrain_iter or 10
    modes = {
        1: dict(retrain_iter=0, nudging_iter=0, bipolarize=False),
        2: dict(retrain_iter=retrain, nudging_iter=0, bipolarize=True),
        3: dict(retrain_iter=retrain, nudging_iter=mcfg.nudging_iter or 100, bipolarize=False),
    }
    return dataclasses.replace(mcfg, interaction="v2v", lgp=None, cag2g=False, **modes[v2v_mode])


def _sgd(params, lr: float, mcfg: G2GConfig):
    return torch.optim.SGD(
        params, lr=lr, momentum=mcfg.momentum, weight_decay=mcfg.weight_decay, nesterov=mcfg.nesterov
    )


def _lut(classes: list[int], device) -> torch.Tensor:
    lut = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    return lut.to(device)


def pretrain(
    model: G2GNet,
    data: FSCILData,
    epochs: int,
    lr: float,
    step: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    ckpt_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    num_workers: int = 0,
) -> list[float]:
    """Stage 1: cross-entropy on the base classes, backbone + linear head on ``D`` features."""
    device = torch.device(device)
    model.to(device)
    base = data.split[0]
    lut = _lut(base.classes, device)
    params = list(model.backbone.parameters()) + list(model.head.parameters())
    opt = _sgd(params, lr, model.config)
    sched = torch.optim.lr_scheduler.StepLR(opt, max(step, 1), 0.1)
    mgr = CheckpointManager(ckpt_dir) if ckpt_dir else None
    start, losses = 0, []
    if mgr and resume and (st := mgr.load_latest()) is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        start, losses = st["step"], st["losses"]
    idx = base.train_idx
    for ep in tqdm(range(start, epochs), desc="pretrain", disable=not progress):
        model.train()
        perm = idx[torch.randperm(idx.numel(), generator=generator)]
        tot, n = 0.0, 0
        if isinstance(data.train, TensorDataset):
            batches = (
                gather(data.train, perm[i : i + batch_size]) for i in range(0, perm.numel(), batch_size)
            )
        else:  # image files: decode and augment in worker processes
            batches = DataLoader(Subset(data.train, perm.tolist()), batch_size, num_workers=num_workers)
        for x, y in batches:
            if x.shape[0] < 2:
                continue
            x, y = x.to(device), lut[y.to(device)]
            loss = F.cross_entropy(model.pretrain_logits(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, n = tot + float(loss.detach()) * x.shape[0], n + x.shape[0]
        sched.step()
        losses.append(tot / max(n, 1))
        if mgr:
            mgr.save(
                ep + 1,
                {
                    "model": model.state_dict(),
                    "optim": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "losses": losses,
                },
            )
    return losses


def _episode(per_class: list[torch.Tensor], ways: int, shots: int, queries: int, gen):
    """Sample ``ways`` classes, ``shots + queries`` images each (episode labels 0..ways-1)."""
    cls = torch.randperm(len(per_class), generator=gen)[:ways]
    sup, qry, ys, yq = [], [], [], []
    for j, c in enumerate(cls.tolist()):
        pool = per_class[c]
        pick = pool[torch.randperm(pool.numel(), generator=gen)[: shots + queries]]
        sup.append(pick[:shots])
        qry.append(pick[shots:])
        ys += [j] * len(pick[:shots])
        yq += [j] * len(pick[shots:])
    return torch.cat(sup), torch.tensor(ys), torch.cat(qry), torch.tensor(yq)


def _views(x: torch.Tensor, mcfg: G2GConfig, gen) -> torch.Tensor:
    return torch.cat(
        [
            augment_batch(x, gen, mcfg.crop_scale_min, mcfg.hflip, mcfg.color_jitter)
            for _ in range(mcfg.n_views)
        ]
    )


def metatrain(
    model: G2GNet,
    data: FSCILData,
    iters: int | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    ckpt_dir: str | Path | None = None,
    ckpt_every: int = 1000,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Stage 2: episodic meta-training on the base classes (spec §3.6). Supports are written (no grad) as
    episode prototypes, queries (``n_views`` augmented views when CAG2G is on) are scored, and the loss is
    ``BCE(w, onehot) + lambda_LGP L_LGP + lambda_CA L_CA``. Returns the loss/collapse-index history."""
    c = model.config
    device = torch.device(device)
    model.to(device)
    iters = c.meta_iters if iters is None else iters
    base = data.split[0]
    ytr = data.train_labels[base.train_idx]
    per_class = [base.train_idx[ytr == k] for k in base.classes]
    ways = min(c.meta_ways, len(per_class))
    min_pool = min(p.numel() for p in per_class)
    shots, queries = c.meta_shots, min(c.meta_queries, max(1, min_pool - c.meta_shots))
    params = list(model.backbone.parameters()) + list(model.proj.parameters())
    opt = _sgd(params, c.lr, c)
    sched = torch.optim.lr_scheduler.StepLR(opt, max(c.lr_step, 1), c.lr_gamma)
    mgr = CheckpointManager(ckpt_dir) if ckpt_dir else None
    hist: dict[str, list[float]] = {"loss": [], "bce": [], "lgp": [], "ca": [], "collapse": []}
    start = 0
    if mgr and resume and (st := mgr.load_latest()) is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        start, hist = st["step"], st["hist"]
    bar = tqdm(range(start, iters), desc=f"metatrain[{c.interaction}]", disable=not progress)
    for it in bar:
        model.train()
        si, ys, qi, yq = _episode(per_class, ways, shots, queries, generator)
        xs, _ = gather(data.train, si)
        xq, _ = gather(data.train, qi)
        xs, ys, xq, yq = xs.to(device), ys.to(device), xq.to(device), yq.to(device)
        with torch.no_grad():
            st_sup = class_stats(ys, model.local_maps(xs), model.proj, c.representation, c.edge_knn)
        cs = sorted(st_sup)
        n = torch.stack([st_sup[k]["n"] for k in cs]).float().view(-1, 1, 1)
        keys = torch.stack([st_sup[k]["keys"] for k in cs])
        if c.node_proto == "mean_rho":
            nodes = torch.stack([st_sup[k]["nodes"] for k in cs]) / n
        else:
            nodes = represent(torch.stack([st_sup[k]["raw"] for k in cs]), c.representation)
        adj = (
            cosine_adjacency(nodes, c.edge_knn)
            if c.edge_proto == "from_nodes"
            else torch.stack([st_sup[k]["adj"] for k in cs]) / n
        )
        if c.cag2g:
            xq_in, yq_in = _views(xq, c, generator), yq.repeat(c.n_views)
        else:
            xq_in, yq_in = xq, yq
        f = model.local_maps(xq_in)
        q, z, a = model.embed(f)
        w = weightings(model.similarity(q, z, a, keys, nodes, adj), c.sharpen_train, c.beta, c.normalize)
        bce = episode_bce_loss(w, yq_in)
        loss = bce
        l_lgp = l_ca = torch.zeros((), device=device)
        if c.lgp is not None and c.lambda_lgp > 0:
            l_lgp = lgp_loss(f, z, c.lgp, c.lgp_detach_backbone, c.lgp_margin, c.edge_knn)
            loss = loss + c.lambda_lgp * l_lgp
        if c.cag2g and c.lambda_ca > 0:
            l_ca = cag2g_loss(z, a, yq_in, c.tau, c.alpha, c.node_match, c.edge_sim)
            loss = loss + c.lambda_ca * l_ca
        if not torch.isfinite(loss):
            raise FloatingPointError(f"meta-training loss became {float(loss)} at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in (("loss", loss), ("bce", bce), ("lgp", l_lgp), ("ca", l_ca)):
            hist[k].append(float(v.detach()))
        hist["collapse"].append(collapse_index(a.detach()) if a.shape[-1] > 1 else float("nan"))
        if mgr and ckpt_every > 0 and (it + 1) % ckpt_every == 0:
            mgr.save(
                it + 1,
                {
                    "model": model.state_dict(),
                    "optim": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "hist": hist,
                },
            )
    return hist


@torch.no_grad()
def _maps(model: G2GNet, ds, idx: torch.Tensor, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    out, ys = [], []
    for i in range(0, idx.numel(), batch):
        x, y = gather(ds, idx[i : i + batch])
        out.append(model.local_maps(x.to(device)))
        ys.append(y.to(device))
    return torch.cat(out), torch.cat(ys)


@torch.no_grad()
def write_base_memory(model: G2GNet, data: FSCILData, batch: int = 256, device="cpu") -> None:
    """Write the base classes from all their training images (eval transform, eval mode, streamed)."""
    c = model.config
    model.eval()
    model.memory.reset()
    idx = data.split[0].train_idx
    stats: dict = {}
    for i in range(0, idx.numel(), batch):
        x, y = gather(data.train_plain, idx[i : i + batch])
        maps = model.local_maps(x.to(device))
        stats = merge_stats(stats, class_stats(y.to(device), maps, model.proj, c.representation, c.edge_knn))
    model.memory.write_stats(stats, c.edge_proto, c.edge_knn, c.node_proto, c.representation)


def _nudge(p0: torch.Tensor, mcfg: G2GConfig) -> torch.Tensor:
    if mcfg.legacy_implicit_seeds:
        torch.manual_seed(100)
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.SGD([p], lr=mcfg.nudging_lr)
    for _ in range(mcfg.nudging_iter):
        loss = nudging_loss(p, p0, mcfg.nudging_deviation)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p.detach()


def incremental_session(
    model: G2GNet,
    data: FSCILData,
    session,
    device="cpu",
    generator: torch.Generator | None = None,
    batch: int = 256,
) -> dict[str, float]:
    """Stage 3 (spec §3.6): frozen backbone; store ``F_bar_c`` and write the new classes; optional
    nudging / bipolarisation; ``retrain_iter`` steps on ``g_phi`` (cosine alignment + CAG2G + LGP);
    rebuild every prototype from the stored maps. Only ``g_phi`` (and nudged prototypes) change."""
    c = model.config
    model.freeze_backbone()
    x, y = gather(data.train_plain, session.train_idx)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        maps = model.local_maps(x)
    mem = model.memory
    mem.write(y, maps, model.proj, c.representation, c.edge_proto, c.edge_knn, c.node_proto)
    # refinement targets (C-FSCIL align(): nudge -> bipolarise -> retrain FC -> rebuild)
    keys_t, nodes_t = mem.keys.clone(), mem.nodes.clone()
    if c.nudging_iter > 0:
        if c.interaction == "v2v":
            keys_t = _nudge(represent(keys_t, c.representation).unsqueeze(0), c).squeeze(0)
        else:
            nodes_t = _nudge(nodes_t.transpose(0, 1), c).transpose(0, 1)
    if c.bipolarize:
        keys_t, nodes_t = torch.sign(keys_t), torch.sign(nodes_t)
    info = {"align_loss": float("nan")}
    if c.retrain_iter > 0:
        model.proj.train()
        opt = torch.optim.SGD(model.proj.parameters(), lr=c.retrain_lr, momentum=c.momentum)
        feats = mem.feats
        use_ca = c.interaction == "g2g" and c.cag2g and c.retrain_ca and c.lambda_ca > 0
        if use_ca:
            with torch.no_grad():
                views = _views(x, c, generator)
                f_views = model.local_maps(views)
            old = torch.isin(mem.class_ids, y.unique(), invert=True)
            ca_maps = torch.cat([f_views, feats[old]])
            ca_labels = torch.cat([y.repeat(c.n_views), mem.class_ids[old]])
        for _ in range(c.retrain_iter):
            if c.interaction == "v2v":
                pred = represent(model.proj(feats.mean(1)), c.representation)
                loss = cosine_align_loss(pred, represent(keys_t, c.representation))
            else:
                pred = represent(model.proj(feats), c.representation)
                loss = cosine_align_loss(pred, nodes_t)
            if use_ca:
                _, z, a = model.embed(ca_maps)
                loss = loss + c.lambda_ca * cag2g_loss(
                    z, a, ca_labels, c.tau, c.alpha, c.node_match, c.edge_sim
                )
            if c.retrain_lgp and c.lgp is not None:
                _, z, _ = model.embed(maps)
                loss = loss + c.lambda_lgp * lgp_loss(maps, z, c.lgp, True, c.lgp_margin, c.edge_knn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        info["align_loss"] = float(loss.detach())
        model.rebuild_memory()
    elif c.nudging_iter > 0 or c.bipolarize:
        mem.keys = keys_t
        mem.nodes = nodes_t
        mem.adj = cosine_adjacency(nodes_t, c.edge_knn)
        mem.invalidate()
    model.eval()
    return info


@torch.no_grad()
def evaluate(model, data: FSCILData, t: int, batch: int = 256, device="cpu") -> dict[str, float]:
    """Top-1 over the test images of every class seen up to session ``t`` (single joint head)."""
    model.eval()
    idx = data.split.test_idx_seen(t)
    preds, ys, coll, bcoll = [], [], [], []
    for i in range(0, idx.numel(), batch):
        x, y = gather(data.test, idx[i : i + batch])
        x = x.to(device)
        preds.append(model.predict(x).cpu())
        ys.append(y)
        if isinstance(model, G2GNet) and model.num_nodes > 1:
            f = model.local_maps(x)
            coll.append(collapse_index(model.embed(f)[2]))
            bcoll.append(collapse_index(cosine_adjacency(f)))
    pred, y = torch.cat(preds), torch.cat(ys)
    acc = session_accuracy(pred, y)
    b, n = base_novel_accuracy(pred, y, data.base_classes)
    out = {"acc": acc, "base_acc": b, "novel_acc": n}
    groups = []  # accuracy on the test images of each session's classes (a row of the accuracy matrix)
    for s in list(data.split)[: t + 1]:
        mask = torch.isin(y, torch.as_tensor(s.classes, dtype=y.dtype))
        groups.append(float((pred[mask] == y[mask]).float().mean()) if mask.any() else float("nan"))
    out["groups"] = groups
    out["hm"] = harmonic_mean(b, n) if t > 0 else float("nan")
    out["collapse"] = sum(coll) / len(coll) if coll else float("nan")
    out["backbone_collapse"] = sum(bcoll) / len(bcoll) if bcoll else float("nan")
    return out


def run_fscil(
    data: FSCILData,
    cfg: ExperimentConfig,
    method: str | None = None,
    seed: int = 0,
    pretrained: dict | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> tuple[RunReport, G2GNet]:
    """One full FSCIL run of ``method`` (g2g | v2v | ncm | teen); returns the report and the model.

    ``pretrained``: a state dict of a pre-trained :class:`G2GNet` to share across methods (fair comparison);
    otherwise stage 1 runs here (checkpointed under ``out_dir/pretrain`` when given).
    """
    method = method or cfg.method
    device = get_device(cfg.device)
    gen = seed_everything(seed)
    mcfg = method_config(dataclasses.replace(cfg.model, seed=seed), method, cfg.v2v_mode)
    model = build_model(data, mcfg).to(device)
    out = Path(out_dir) if out_dir else None
    extra: dict = {}
    if pretrained is not None:
        model.load_state_dict(pretrained, strict=False)
    else:
        extra["pretrain_loss"] = pretrain(
            model,
            data,
            cfg.pretrain_epochs,
            cfg.pretrain_lr,
            cfg.pretrain_step,
            cfg.pretrain_batch,
            device,
            gen,
            out / "pretrain" if out else None,
            resume,
            progress,
            cfg.num_workers,
        )
    sessions = []
    if method in ("ncm", "teen"):
        clf = NCMClassifier(model, teen=(method == "teen"), tau=mcfg.teen_tau, weight=mcfg.teen_weight)
        for t, s in enumerate(data.split):
            idx = s.train_idx
            maps, ys = _maps(model.eval(), data.train_plain, idx, cfg.eval_batch, device)
            clf.write(ys, maps, calibrate=t > 0)
            sessions.append(evaluate(clf, data, t, cfg.eval_batch, device))
    else:
        extra["meta"] = metatrain(
            model,
            data,
            None,
            device,
            gen,
            out / f"meta_{method}" if out else None,
            cfg.ckpt_every,
            resume,
            progress,
        )
        write_base_memory(model, data, cfg.eval_batch, device)
        frozen = copy.deepcopy(model.backbone.state_dict())
        sessions.append(evaluate(model, data, 0, cfg.eval_batch, device))
        for s in list(data.split)[1:]:
            incremental_session(model, data, s, device, gen, cfg.eval_batch)
            sessions.append(evaluate(model, data, s.index, cfg.eval_batch, device))
        extra["backbone_unchanged"] = all(
            torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen.items()
        )
    accs = [r["acc"] for r in sessions]
    matrix = AccuracyMatrix(len(sessions))
    for t, r in enumerate(sessions):
        for g, v in enumerate(r["groups"]):
            matrix.set(t, g, v)
    for k in ("base_acc", "novel_acc", "hm", "collapse", "backbone_collapse"):
        extra[k] = [r[k] for r in sessions]
    report = RunReport(
        method,
        data.name,
        seed,
        accs,
        acc_matrix=matrix.tolist(),
        config=dataclasses.asdict(mcfg),
        extra=extra,
    )
    return report, model
