"""Training loops: base pre-training, episodic meta-training and the incremental-session alignment.

* :func:`pretrain`: stage 1, cross-entropy on the base classes (C-FSCIL ``run_FSCIL.py:pretrain_baseFSCIL``;
  commit cff95a7).
* :func:`metatrain`: stage 2, episodes of ``ways x (shots + queries)`` on the base classes (C-FSCIL
  ``metatrain_baseFSCIL``): supports written with no gradient, queries scored, ``BCE(w, onehot)`` plus
  ``lambda_LGP * LGP + lambda_CA * CAG2G`` (ours, see :mod:`g2g_fscil.lgp`, :mod:`g2g_fscil.cag2g`).
* :func:`incremental_session`: stage 3, C-FSCIL ``align()`` with the backbone frozen: store the class
  statistics, build prototypes from the feature replay, nudge (mode 3) or bipolarise (mode 2), retrain
  ``g_phi`` for ``retrain_iter`` steps, rebuild every prototype.

Pre-training and meta-training run unchanged in one process or under ``torchrun`` / ``accelerate launch``
(:mod:`papers_shared.distributed`): the model is wrapped in DDP; pre-training draws batches from a
``DistributedSampler`` (reseeded every epoch, global batch constant); meta-training samples the same
episode on every process and splits its query batch by rank (the CAG2G loss sees every query through an
autograd ``all_gather``), so N processes take the same steps as one. Checkpoints are written by rank 0
and read by all on resume; progress bars and loss histories come from rank 0 / all-reduced means.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm

from g2g_fscil.baselines.v2v import nudge_prototypes
from g2g_fscil.cag2g import augment_batch, cag2g_loss
from g2g_fscil.config import G2GConfig
from g2g_fscil.data import FSCILData, gather
from g2g_fscil.graphs import collapse_index, cosine_adjacency, represent
from g2g_fscil.interaction import weightings
from g2g_fscil.lgp import lgp_loss
from g2g_fscil.losses import cosine_align_loss, episode_bce_loss
from g2g_fscil.memory import class_stats
from g2g_fscil.model import G2GNet
from papers_shared import distributed as pd
from papers_shared.checkpoints import CheckpointManager
from papers_shared.errors import ConfigError

__all__ = ["incremental_session", "metatrain", "pretrain"]


def _sgd(params, lr: float, mcfg: G2GConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        params, lr=lr, momentum=mcfg.momentum, weight_decay=mcfg.weight_decay, nesterov=mcfg.nesterov
    )


def _lut(classes: list[int], device) -> torch.Tensor:
    lut = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    return lut.to(device)


class _PretrainStep(nn.Module):
    """Backbone + pre-training head as one module, so that DDP synchronises their gradients."""

    def __init__(self, net: G2GNet) -> None:
        super().__init__()
        self.backbone, self.head = net.backbone, net.head
        self._net = [net]  # not a sub-module: proj and the memory stay out of DDP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net[0].pretrain_logits(x)


class _EmbedStep(nn.Module):
    """Backbone + ``g_phi`` as one module: ``x -> (f, q, Z, A)`` (see :meth:`G2GNet.embed`)."""

    def __init__(self, net: G2GNet) -> None:
        super().__init__()
        self.backbone, self.proj = net.backbone, net.proj
        self._net = [net]

    def forward(self, x: torch.Tensor):
        net = self._net[0]
        f = net.local_maps(x)
        return (f, *net.embed(f))


def _resume(mgr: CheckpointManager | None, resume: bool) -> dict | None:
    if mgr is None or not resume:
        return None
    pd.barrier()  # rank 0 has finished writing before anyone reads
    return mgr.load_latest(restore_rng=False)


def pretrain(
    model: G2GNet,
    data: FSCILData,
    epochs: int,
    lr: float,
    step: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    ckpt_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    num_workers: int = 0,
    train_idx: torch.Tensor | None = None,
    classes: list[int] | None = None,
) -> list[float]:
    """Stage 1: cross-entropy on the base classes, backbone + linear head on the ``D`` GAP features.

    ``batch_size`` is the global batch (``batch_size / world_size`` per process); ``seed`` seeds the
    sampler (a new permutation every epoch). ``train_idx`` / ``classes`` train on other images and labels
    (e.g. all classes for the joint-training bound). Returns the mean loss of every epoch.
    """
    device = torch.device(device)
    model.to(device)
    classes = list(data.split[0].classes) if classes is None else list(classes)
    idx = data.split[0].train_idx if train_idx is None else torch.as_tensor(train_idx, dtype=torch.long)
    lut = _lut(classes, device)
    net = pd.wrap_ddp(_PretrainStep(model))
    opt = _sgd(list(model.backbone.parameters()) + list(model.head.parameters()), lr, model.config)
    sched = torch.optim.lr_scheduler.StepLR(opt, step, 0.1)
    mgr = CheckpointManager(ckpt_dir) if ckpt_dir else None
    start, losses = 0, []
    if (st := _resume(mgr, resume)) is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        start, losses = st["step"], list(st["losses"])
    sampler = pd.make_sampler(list(range(idx.numel())), shuffle=True, seed=seed)
    per_rank = pd.per_rank_batch_size(batch_size)
    for ep in tqdm(range(start, epochs), desc="pretrain", disable=not pd.on_main_process(progress)):
        model.train()
        sampler.set_epoch(ep)
        order = idx[torch.as_tensor(list(sampler), dtype=torch.long)]
        if isinstance(data.train, TensorDataset):
            batches = (gather(data.train, order[i : i + per_rank]) for i in range(0, order.numel(), per_rank))
        else:  # image files: decode and augment in worker processes
            batches = DataLoader(Subset(data.train, order.tolist()), per_rank, num_workers=num_workers)
        tot, n = 0.0, 0
        for x, y in batches:
            if x.shape[0] < 2:  # BatchNorm needs two samples; shard sizes are equal on every rank
                continue
            x, y = x.to(device), lut[y.to(device)]
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, n = tot + float(loss.detach()) * x.shape[0], n + x.shape[0]
        sched.step()
        losses.append(pd.reduce_mean(tot / max(n, 1), weight=n))
        if mgr and pd.is_main_process():
            state = {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()}
            mgr.save(ep + 1, {**state, "losses": losses})
    pd.barrier()
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


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``t`` in rank order, differentiable (a no-op in one process)."""
    if pd.world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()))


def _global_feature_mean(f: torch.Tensor) -> torch.Tensor | None:
    """Mean local feature over the whole (all-process) batch, without gradient; ``None`` in one process
    (the LGP loss then takes its batch's own mean)."""
    if pd.world_size() == 1:
        return None
    import torch.distributed as dist

    s = torch.cat([f.detach().sum((0, 1)), f.new_tensor([f.shape[0] * f.shape[1]])])
    dist.all_reduce(s)
    return s[:-1] / s[-1]


def _episode_prototypes(model: G2GNet, xs: torch.Tensor, ys: torch.Tensor):
    """Episode memory from the supports (no grad): raw key sums (C-FSCIL ``write_mem``), nodes, edges."""
    c = model.config
    with torch.no_grad():
        st = class_stats(ys, model.local_maps(xs), model.proj, c.representation, c.edge_knn)
    cs = sorted(st)
    n = torch.stack([st[k]["n"] for k in cs]).float().view(-1, 1, 1)
    keys = torch.stack([st[k]["keys"] for k in cs])
    if c.node_proto == "mean_rho":
        nodes = torch.stack([st[k]["nodes"] for k in cs]) / n
    else:  # rho of the summed raw nodes, as the episode keys are sums
        nodes = represent(torch.stack([st[k]["raw"] for k in cs]), c.representation)
    adj = (
        cosine_adjacency(nodes, c.edge_knn)
        if c.edge_proto == "from_nodes"
        else torch.stack([st[k]["adj"] for k in cs]) / n
    )
    return keys, nodes, adj


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
    """Stage 2: episodic meta-training on the base classes; returns the loss and collapse-index history.

    Every episode: supports -> episode prototypes (no grad); queries (``n_views`` augmented views when
    CAG2G is on) -> graphs -> weightings ``normalise(sharpen(S))``; loss ``BCE(w, onehot) + lambda_LGP
    L_LGP + lambda_CA L_CA``. ``generator`` draws the episodes and augmentations (the same on every
    process); its state is checkpointed, so a resumed run continues with the same episodes.
    """
    c = model.config
    device = torch.device(device)
    model.to(device)
    generator = generator if generator is not None else torch.Generator().manual_seed(c.seed)
    iters = c.meta_iters if iters is None else iters
    base = data.split[0]
    ytr = data.train_labels[base.train_idx]
    per_class = [base.train_idx[ytr == k] for k in base.classes]
    ways = min(c.meta_ways, len(per_class))
    min_pool = min(p.numel() for p in per_class)
    shots, queries = c.meta_shots, min(c.meta_queries, max(1, min_pool - c.meta_shots))
    n_query = ways * queries * (c.n_views if c.cag2g else 1)
    if n_query % pd.world_size():
        raise ConfigError(
            f"the query batch of an episode ({n_query} images) does not split evenly over "
            f"{pd.world_size()} processes; change model.meta_ways/meta_queries/n_views or the process count"
        )
    net = pd.wrap_ddp(_EmbedStep(model))
    opt = _sgd(list(model.backbone.parameters()) + list(model.proj.parameters()), c.lr, c)
    sched = torch.optim.lr_scheduler.StepLR(opt, c.lr_step, c.lr_gamma)
    mgr = CheckpointManager(ckpt_dir) if ckpt_dir else None
    hist: dict[str, list[float]] = {"loss": [], "bce": [], "lgp": [], "ca": [], "collapse": []}
    start = 0
    if (st := _resume(mgr, resume)) is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        generator.set_state(st["generator"])
        start, hist = st["step"], {k: list(v) for k, v in st["hist"].items()}
    rank, zero = pd.rank(), torch.zeros((), device=device)
    bar = tqdm(
        range(start, iters), desc=f"metatrain[{c.interaction}]", disable=not pd.on_main_process(progress)
    )
    for it in bar:
        model.train()
        si, ys, qi, yq = _episode(per_class, ways, shots, queries, generator)
        xs, _ = gather(data.train, si)
        xq, _ = gather(data.train, qi)
        keys, nodes, adj = _episode_prototypes(model, xs.to(device), ys.to(device))
        if c.cag2g:
            xq, yq = _views(xq, c, generator), yq.repeat(c.n_views)
        xq, yq = xq.to(device), yq.to(device)
        per = pd.per_rank_batch_size(xq.shape[0])  # this process's share of the query batch
        y_loc = yq[rank * per : (rank + 1) * per]
        f, q, z, a = net(xq[rank * per : (rank + 1) * per])
        w = weightings(model.similarity(q, z, a, keys, nodes, adj), c.sharpen_train, c.beta, c.normalize)
        bce = episode_bce_loss(w, y_loc)
        loss, l_lgp, l_ca = bce, zero, zero
        if c.lgp is not None and c.lambda_lgp > 0:
            mean = _global_feature_mean(f) if c.lgp == "centred" else None
            l_lgp = lgp_loss(f, z, c.lgp, c.lgp_detach_backbone, c.lgp_margin, c.edge_knn, mean)
            loss = loss + c.lambda_lgp * l_lgp
        if c.cag2g and c.lambda_ca > 0:
            z_all, a_all = _gather_rows(z), _gather_rows(a)
            l_ca = cag2g_loss(z_all, a_all, yq, c.tau, c.alpha, c.node_match, c.edge_sim)
            loss = loss + c.lambda_ca * l_ca
        if not torch.isfinite(loss):
            raise FloatingPointError(f"meta-training loss became {float(loss)} at iteration {it}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        logs = {"loss": loss, "bce": bce, "lgp": l_lgp, "ca": l_ca}
        logs = {k: float(v.detach()) for k, v in logs.items()}
        logs["collapse"] = collapse_index(a.detach()) if a.shape[-1] > 1 else float("nan")
        for k, v in pd.reduce_dict(logs).items():
            hist[k].append(v)
        if mgr and ckpt_every > 0 and (it + 1) % ckpt_every == 0 and pd.is_main_process():
            state = {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()}
            mgr.save(it + 1, {**state, "hist": hist, "generator": generator.get_state()})
    pd.barrier()
    return hist


def incremental_session(
    model: G2GNet,
    data: FSCILData,
    session,
    device="cpu",
    generator: torch.Generator | None = None,
    batch: int = 256,
) -> dict[str, float]:
    """Stage 3, C-FSCIL ``align()`` with graphs; the backbone is frozen, only ``g_phi`` changes.

    1. store ``F_bar_c`` and write the new classes; 2. targets from the feature replay through the current
    ``g_phi`` (V2V keys ``g_phi(mean f)``, G2G prototype nodes); 3. nudge them (``nudging_iter``, C-FSCIL
    mode 3) or bipolarise them (mode 2); 4. ``retrain_iter`` steps of SGD (Nesterov momentum, weight decay,
    as C-FSCIL's ``train_FSCIL`` optimiser) on ``g_phi``: V2V ``-cos(tanh g(f), tanh key)``; G2G node
    cosines ``+ lambda_CA CAG2G (+ lambda_LGP LGP)`` (ours); 5. rebuild every prototype from ``F_bar_c``.
    """
    c = model.config
    generator = generator if generator is not None else torch.Generator().manual_seed(c.seed)
    model.freeze_backbone()
    x, y = gather(data.train_plain, session.train_idx)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        maps = model.local_maps(x)
    mem = model.memory
    mem.write(y, maps, model.proj, c.representation, c.edge_proto, c.edge_knn, c.node_proto)
    with torch.no_grad():  # C-FSCIL align() stage 2: prototypes from the feature replay
        keys_t, nodes_t = model.proj(mem.feats.mean(1)), mem.nodes.clone()
    if c.nudging_iter > 0:
        if c.interaction == "v2v":  # raw keys: tanh inside the loss, as C-FSCIL
            keys_t = nudge_prototypes(keys_t, c, inner_tanh=True)
        else:  # G2G nodes are already in rho space: nudged per node position
            nodes_t = nudge_prototypes(nodes_t.transpose(0, 1), c, inner_tanh=False).transpose(0, 1)
    if c.bipolarize:
        keys_t, nodes_t = torch.sign(keys_t), torch.sign(nodes_t)
    info = {"align_loss": float("nan")}
    if c.retrain_iter > 0:
        model.proj.train()
        opt = _sgd(model.proj.parameters(), c.retrain_lr, c)
        feats = mem.feats
        use_ca = c.interaction == "g2g" and c.cag2g and c.retrain_ca and c.lambda_ca > 0
        if use_ca:
            with torch.no_grad():
                f_views = model.local_maps(_views(x, c, generator))
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
