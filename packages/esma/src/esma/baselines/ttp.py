"""TTP baseline (Naseer et al., "On Generating Transferable Targeted Perturbations", ICCV 2021; official code
Muzammal-Naseer/TTP ``train.py``), the generative method ESMA compares with.

One unconditional ResNet generator **per target**. Loss per batch, with the source model ``f``, the
adversarial views ``a`` (of ``x``), ``a_rot`` (of a randomly 90-degree-rotated ``x``) and ``a_aug``
(of an augmented ``x``), and a batch ``x_t`` of target-class images:

* distribution matching: ``sum_{v in {a, a_rot, a_aug}} [KL(p_t || p_v) + KL(p_v || p_t)] / B`` with
  ``p = softmax(f(.))`` and KL summed over all entries;
* neighbourhood similarity: ``sum_{v in {a_rot, a_aug}} SKL(S(f(a), f(v)), S(f(x_t), f(x_t))) / B``
  over row-softmaxed similarity matrices. ``legacy_similarity_norm=True`` reproduces the TTP code,
  which divides the Gram matrix by one scalar (the dot product of the two norm vectors) instead of
  forming cosine similarities; the default uses cosine similarities.

Generator layout (``ngf=64``, 6 residual blocks, 7,841,411 parameters) and state-dict names follow
the released checkpoints, so :func:`load_ttp_checkpoint` reads them directly (``weights_only=True``);
generators trained here are written as safetensors with their layout as metadata.

Under ``torchrun`` :class:`TTPTrainer` wraps the generator in DDP and shards both loaders (ours). The
neighbourhood-similarity term then compares the rows of each process's share of the batch (as per-GPU
batch statistics do), and BatchNorm statistics are per process on CPU (SyncBatchNorm on CUDA), so a
multi-process TTP run is close to, not identical with, a one-process run of the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from papers_shared import distributed as dist
from papers_shared.attacks import GenerativeAttack
from papers_shared.checkpoints import CheckpointManager
from papers_shared.errors import CheckpointError

from ..trainer import optimizer_step, sharded_loader

__all__ = [
    "TTPAttack",
    "TTPGenerator",
    "TTPTrainer",
    "load_ttp_checkpoint",
    "random_rotation",
    "save_ttp_generator",
    "simple_augment",
    "ttp_loss",
]


class _TTPResBlock(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(f, f, 3, bias=False),
            nn.BatchNorm2d(f),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.ReflectionPad2d(1),
            nn.Conv2d(f, f, 3, bias=False),
            nn.BatchNorm2d(f),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class TTPGenerator(nn.Module):
    """ResNet image generator: 7x7 conv, two stride-2 convs, ``n_blocks`` residual blocks, two
    transposed convs, 7x7 conv, ``(tanh + 1) / 2``. ``inception=True`` crops one row/column (299 input)."""

    def __init__(
        self, ngf: int = 64, n_blocks: int = 6, inception: bool = False, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.ngf, self.n_blocks, self.inception = ngf, n_blocks, inception
        self.block1 = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(ngf, ngf * 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
        )
        self.block3 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf * 4, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
        )
        for i in range(n_blocks):
            self.add_module(f"resblock{i + 1}", _TTPResBlock(ngf * 4))
        self.upsampl1 = nn.Sequential(
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
        )
        self.upsampl2 = nn.Sequential(
            nn.ConvTranspose2d(ngf * 2, ngf, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
        )
        self.blockf = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, in_channels, 7))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or (not self.inception and (x.shape[-1] % 4 or x.shape[-2] % 4)):
            raise ValueError(
                f"TTPGenerator needs (B, C, H, W) with H, W divisible by 4, got {tuple(x.shape)}"
            )
        h = self.block3(self.block2(self.block1(x)))
        for i in range(self.n_blocks):
            h = getattr(self, f"resblock{i + 1}")(h)
        h = self.blockf(self.upsampl2(self.upsampl1(h)))
        if self.inception:
            h = h[..., : x.shape[-2], : x.shape[-1]]
        return (torch.tanh(h) + 1.0) / 2.0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


TTP_FORMAT = "esma-ttp-generator-v1"


def save_ttp_generator(path: str | Path, gen: TTPGenerator, target: int | None = None) -> Path:
    """Write a TTP generator as safetensors with its layout (``ngf``, ``n_blocks``, ``inception``) and
    its target class as metadata (ours); :func:`load_ttp_checkpoint` reads it."""
    from ..weights import write_weights

    gen = getattr(gen, "module", gen)
    layout = {"ngf": gen.ngf, "n_blocks": gen.n_blocks, "inception": gen.inception}
    return write_weights(path, gen.state_dict(), TTP_FORMAT, layout=layout, target=target)


def load_ttp_checkpoint(path: str | Path, inception: bool = False, map_location: str = "cpu") -> TTPGenerator:
    """Load a TTP generator: one written by :func:`save_ttp_generator`, or a released TTP checkpoint
    (``netG_<model>_<epoch>_<target>.pth``, a plain state dict, read with ``weights_only=True``).

    A damaged, foreign or code-carrying file raises :class:`~papers_shared.errors.CheckpointError`.
    """
    from ..weights import read_weights

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"TTP checkpoint not found: {path}. The released generators are linked from the README of "
            "github.com/Muzammal-Naseer/TTP; or train one with `esma ttp-train`."
        )

    def released(obj) -> tuple[dict, dict]:
        if isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise ValueError("not a state dict of tensors")
        n_blocks = len({k.split(".")[0] for k in obj if k.startswith("resblock")})
        ngf = int(obj["block1.1.weight"].shape[0]) if "block1.1.weight" in obj else 64
        return dict(obj), {"layout": {"ngf": ngf, "n_blocks": max(n_blocks, 1), "inception": inception}}

    state, meta = read_weights(path, TTP_FORMAT, "TTP generator", map_location, legacy=released)
    try:
        gen = TTPGenerator(**meta["layout"])
        gen.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} does not hold a TTP ResNet generator ({first})") from None
    return gen.eval()


def random_rotation(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rotate each image by a multiple of 90 degrees (balanced random assignment, as in TTP)."""
    n = x.shape[0]
    ks = torch.arange(4).repeat(n // 4 + 1)[:n]
    ks = ks[torch.randperm(n, generator=generator)]
    if x.shape[-1] != x.shape[-2]:
        ks = ks - ks % 2  # only 0 / 180 degrees keep non-square shapes
    return torch.stack([torch.rot90(xi, int(k), (1, 2)) for xi, k in zip(x, ks.tolist())])


def simple_augment(x: Tensor, generator: torch.Generator | None = None, min_scale: float = 0.5) -> Tensor:
    """[ours] tensor augmentation standing in for TTP's second-crop transform: a random resized crop
    (area fraction in [min_scale, 1], resized back) and a horizontal flip with probability 1/2."""
    h, w = x.shape[-2:]
    s = float(torch.empty(()).uniform_(min_scale, 1.0, generator=generator)) ** 0.5
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    out = F.interpolate(
        x[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False
    )
    if bool(torch.rand((), generator=generator) < 0.5):
        out = out.flip(-1)
    return out.clamp(0.0, 1.0)


def _kl_sum(log_p: Tensor, q: Tensor) -> Tensor:
    """``KLDivLoss(reduction='sum')(log_p, q) = sum q (log q - log p)``."""
    return F.kl_div(log_p, q, reduction="sum")


def _similarity(a: Tensor, b: Tensor, legacy: bool) -> Tensor:
    gram = a @ b.T
    if legacy:
        return gram / (a.norm(dim=1) @ b.norm(dim=1))
    return gram / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]).clamp_min(1e-12)


def ttp_loss(
    adv_out: Tensor,
    adv_rot_out: Tensor,
    adv_aug_out: Tensor,
    match_out: Tensor,
    legacy_similarity_norm: bool = False,
) -> Tensor:
    """TTP objective on source-model logits (module docstring). Rows of ``match_out`` and the adversarial
    views must have the same count ``B``."""
    b = adv_out.shape[0]
    if match_out.shape != adv_out.shape:
        raise ValueError(
            f"match batch {tuple(match_out.shape)} must match adversarial batch {tuple(adv_out.shape)}"
        )
    loss = adv_out.new_zeros(())
    for out in (adv_out, adv_rot_out, adv_aug_out):
        loss = loss + _kl_sum(F.log_softmax(out, 1), F.softmax(match_out, 1)) / b
        loss = loss + _kl_sum(F.log_softmax(match_out, 1), F.softmax(out, 1)) / b
    st = _similarity(match_out, match_out, legacy_similarity_norm)
    for out in (adv_rot_out, adv_aug_out):
        ss = _similarity(adv_out, out, legacy_similarity_norm)
        loss = loss + _kl_sum(F.log_softmax(ss, 1), F.softmax(st, 1)) / b
        loss = loss + _kl_sum(F.log_softmax(st, 1), F.softmax(ss, 1)) / b
    return loss


class TTPTrainer:
    """Train one :class:`TTPGenerator` towards one target class (Adam lr 2e-4, betas (0.5, 0.999)).

    Runs in one process or under ``torchrun`` (DDP generator, sharded loaders; module docstring).
    """

    def __init__(
        self,
        generator: TTPGenerator,
        source_model: nn.Module,
        eps_train: float = 10 / 255,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.5, 0.999),
        smoothing: bool = True,
        legacy_similarity_norm: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        target: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        self.source_model = source_model.to(self.device).eval()
        for p in self.source_model.parameters():
            p.requires_grad_(False)
        self.model = dist.wrap_ddp(self.generator, self.device)
        self.generator = dist.unwrap(self.model)
        self.attack = GenerativeAttack(self.model, eps=eps_train, smoothing=smoothing, conditional=False)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=tuple(betas))
        self.legacy = bool(legacy_similarity_norm)
        self.seed = int(seed)
        self.target = target
        # rotations / crops differ per process (each augments its own share of the batch)
        self.rng = torch.Generator().manual_seed(self.seed + 7919 * dist.rank())
        self.step = 0
        self.epoch = 0
        self.history: list[float] = []

    def train_step(self, x: Tensor, x_match: Tensor) -> float:
        x, x_match = x.to(self.device), x_match.to(self.device)
        if x_match.shape[0] != x.shape[0]:
            n = x.shape[0]
            x_match = x_match.repeat((n + x_match.shape[0] - 1) // x_match.shape[0], 1, 1, 1)[:n]
        x_rot = random_rotation(x, self.rng)
        x_aug = simple_augment(x, self.rng)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        f = self.source_model
        views = (self.attack.perturb(x), self.attack.perturb(x_rot), self.attack.perturb(x_aug))
        return optimizer_step(self, ttp_loss(*(f(v) for v in views), f(x_match), self.legacy), "TTP")

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_gen": self.rng.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "history": list(self.history),
        }

    def fit(
        self,
        loader: Iterable,
        match_loader: Iterable,
        epochs: int = 20,
        ckpt_dir: str | Path | None = None,
        resume: bool = False,
        max_steps: int | None = None,
        progress: bool = True,
        batch_size: int | None = None,
        num_workers: int = 0,
    ) -> list[float]:
        """Epochs over ``loader`` (source images); target images cycle through ``match_loader``. Both may
        be Datasets (sharded across processes, global batch ``batch_size``) or iterables of batches."""
        from tqdm.auto import tqdm

        mgr = CheckpointManager(ckpt_dir, keep=2) if ckpt_dir is not None else None
        if resume and mgr is not None:
            dist.barrier()
            state = mgr.load_latest(map_location=self.device)
            if state is not None:
                self.generator.load_state_dict(state["generator"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.rng.set_state(state["rng_gen"])
                self.step, self.epoch = int(state["step"]), int(state["epoch"])
                self.history = [float(v) for v in state.get("history", [])]
        loader, sampler = sharded_loader(loader, batch_size, self.seed, num_workers)
        drop = isinstance(match_loader, Dataset) and len(match_loader) >= (batch_size or 1)
        match_loader, match_sampler = sharded_loader(
            match_loader, batch_size, self.seed + 1, num_workers, drop
        )
        match_epoch = 0
        match_iter = iter(match_loader)
        stop = max_steps is not None and self.step >= max_steps
        bar = tqdm(
            total=epochs,
            initial=self.epoch,
            desc="TTP",
            unit="epoch",
            disable=not dist.on_main_process(progress),
        )
        while self.epoch < epochs and not stop:
            if sampler is not None:
                sampler.set_epoch(self.epoch)
            for batch in loader:
                try:
                    xm = next(match_iter)
                except StopIteration:
                    match_epoch += 1
                    if match_sampler is not None:
                        match_sampler.set_epoch(match_epoch)
                    match_iter = iter(match_loader)
                    xm = next(match_iter)
                xm = xm[0] if isinstance(xm, (tuple, list)) else xm
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                self.train_step(x, xm)
                if max_steps is not None and self.step >= max_steps:
                    stop = True
                    break
            self.epoch += 1
            bar.update(1)
            if mgr is not None:
                if dist.is_main_process():
                    mgr.save(self.epoch, self.state_dict())
                dist.barrier()
        bar.close()
        if ckpt_dir is not None and dist.is_main_process():
            save_ttp_generator(Path(ckpt_dir) / "generator.safetensors", self.generator, self.target)
        dist.barrier()
        return self.history


class TTPAttack:
    """Dispatch ``attack(images, target_labels)`` to the per-target TTP generators (one per class id)."""

    name = "ttp"
    targeted = True

    def __init__(
        self, generators: Mapping[int, nn.Module], eps: float = 16 / 255, smoothing: bool = True
    ) -> None:
        if not generators:
            raise ValueError("TTPAttack needs at least one generator")
        self.attacks = {
            int(t): GenerativeAttack(g, eps=eps, smoothing=smoothing, conditional=False)
            for t, g in generators.items()
        }
        self.eps = float(eps)
        self.steps = 1

    def __call__(self, images: Tensor, labels: Tensor | int) -> Tensor:
        if isinstance(labels, int):
            labels = torch.full((images.shape[0],), labels, dtype=torch.long)
        out = images.clone()
        for t in labels.unique().tolist():
            if int(t) not in self.attacks:
                raise ValueError(f"no TTP generator for target {t}; have {sorted(self.attacks)}")
            sel = labels == t
            out[sel.to(images.device)] = self.attacks[int(t)](images[sel.to(images.device)])
        return out

    def num_parameters(self) -> int:
        return sum(sum(p.numel() for p in a.generator.parameters()) for a in self.attacks.values())

    def describe(self) -> dict[str, Any]:
        return {
            "attack": self.name,
            "eps": self.eps,
            "steps": 1,
            "targeted": True,
            "generators": len(self.attacks),
        }
