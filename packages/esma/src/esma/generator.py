"""ESMA's conditional UNet generator ``G(x, k)`` (official ``Train_Gen/Generator.py:Generator``, gjq100/ESMA
commit eff2015; the paper's generator, Gao et al., NeurIPS 2023).

One generator serves all ``K`` target classes: the target index ``k`` is embedded
(:class:`TargetEmbedding`) and injected into every :class:`ResBlock` through a per-block projection
(``target_proj``). The output is an *image* in (0, 1) (``(tanh(h) + 1) / 2``), not a residual; the
attack smooths and projects it onto the eps-ball around ``x`` (``Train_Gen/transfer_test.py:attack``).

Default layout (``ch=32, ch_mult=(1, 2, 3, 4), num_res_blocks=1``) has 4,397,635 parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GCT",
    "DownSample",
    "EsmaGenerator",
    "LinearAttention",
    "ResBlock",
    "TargetEmbedding",
    "UpSample",
]


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    """k x k convolution with reflect padding (same size for stride 1)."""
    pad = k // 2
    mode = "reflect" if pad > 0 else "zeros"
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, padding_mode=mode)


class TargetEmbedding(nn.Module):
    """``Embedding(K, ch) -> Linear(ch, tdim) -> GELU -> Linear(tdim, tdim)`` (``Generator.py:TargetEmbedding``).

    ``padding_idx=0`` reproduces the official quirk: row 0 of the table is fixed at zero.
    """

    def __init__(self, num_targets: int, ch: int, tdim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        if padding_idx is not None and not 0 <= padding_idx < num_targets:
            raise ValueError(f"padding_idx must be None or in [0, {num_targets}), got {padding_idx}")
        self.num_targets = num_targets
        self.embedding = nn.Embedding(num_targets, ch, padding_idx=padding_idx)
        self.mlp = nn.Sequential(nn.Linear(ch, tdim), nn.GELU(), nn.Linear(tdim, tdim))

    def forward(self, k: Tensor) -> Tensor:
        return self.mlp(self.embedding(k))


class LinearAttention(nn.Module):
    """Linear attention whose queries are derived from the keys (``Generator.py:AttnBlock``).

    ``u = GN(h)``; ``[k, v] = split(Conv1x1(u))``; ``q = softmax_C(k) / sqrt(C)``;
    ``kappa = softmax_HW(k)``; ``A = kappa v^T``; ``o = A^T q``; returns ``u + Conv1x1(GELU(GN(o)))``.
    """

    def __init__(self, channels: int, groups: int = 16) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1)
        self.out_norm = nn.GroupNorm(groups, channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        b, c, hh, ww = h.shape
        u = self.norm(h)
        k, v = self.to_kv(u).flatten(2).chunk(2, dim=1)  # (B, C, HW) each
        q = k.softmax(dim=1) * c**-0.5
        kappa = k.softmax(dim=-1)
        context = torch.bmm(kappa, v.transpose(1, 2))  # (B, C, C): sum over positions
        o = torch.bmm(context.transpose(1, 2), q).view(b, c, hh, ww)
        return u + self.out(F.gelu(self.out_norm(o)))


class ResBlock(nn.Module):
    """Residual block conditioned on the target embedding (``Generator.py:ResBlock``).

    ``h = conv(GN(GELU(x))) + target_proj(e)``; ``h = conv(GN(GELU(h)))``; affine-free LayerNorm over
    (C, H, W); ``h + shortcut(x)``; optional linear attention.
    """

    def __init__(self, cin: int, cout: int, tdim: int, attn: bool, groups: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.GELU(), nn.GroupNorm(groups, cin), _conv(cin, cout, 3))
        self.target_proj = nn.Sequential(nn.GELU(), nn.Linear(tdim, cout))
        self.block2 = nn.Sequential(nn.GELU(), nn.GroupNorm(groups, cout), _conv(cout, cout, 3))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = LinearAttention(cout, groups) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.block1(x) + self.target_proj(emb)[:, :, None, None]
        h = self.block2(h)
        h = F.layer_norm(h, h.shape[1:])
        return self.attn(h + self.shortcut(x))


class DownSample(nn.Module):
    """``Conv3x3_s2(GELU(x)) + Conv5x5_s2(GELU(x))`` (halves H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = _conv(channels, channels, 3, stride=2)
        self.conv5 = _conv(channels, channels, 5, stride=2)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = F.gelu(x)
        return self.conv3(x) + self.conv5(x)


class UpSample(nn.Module):
    """``GELU -> GN -> ConvTranspose(5, stride 2, padding 2, output_padding 1)`` (doubles H and W)."""

    def __init__(self, channels: int, groups: int = 16) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.up = nn.ConvTranspose2d(channels, channels, 5, stride=2, padding=2, output_padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.up(self.norm(F.gelu(x)))


class GCT(nn.Module):
    """Gated Channel Transformation, l2 mode (Yang et al., CVPR 2020; ``Generator.py:GCT``).

    ``s_c = alpha_c sqrt(sum_hw x_c^2 + eps)``, ``n_c = gamma_c / sqrt(mean_c s_c^2 + eps)``,
    ``out = x (1 + tanh(s_c n_c + beta_c))``. Identity at initialisation (gamma = beta = 0).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        s = (x.pow(2).sum(dim=(2, 3), keepdim=True) + self.eps).sqrt() * self.alpha
        n = self.gamma / (s.pow(2).mean(dim=1, keepdim=True) + self.eps).sqrt()
        return x * (1.0 + torch.tanh(s * n + self.beta))


class EsmaGenerator(nn.Module):
    """Conditional UNet ``G(x, k) -> image in (0, 1)`` (``Generator.py:Generator``).

    Args:
        num_targets: number of target classes ``K`` (the generator's conditioning vocabulary).
        ch: base width; ``ch * m`` for every ``m`` in ``ch_mult`` must be a multiple of ``gn_groups``.
        ch_mult: width multiplier per resolution level (``len(ch_mult) - 1`` stride-2 downsamples).
        num_res_blocks: ResBlocks per level on the way down (``+1`` on the way up).
        gn_groups: GroupNorm groups everywhere.
        embedding_padding_idx: ``0`` reproduces the official code's fixed-zero embedding row for
            target 0 (``legacy_padding_idx``); ``None`` (default) learns every row.
        in_channels: image channels.
    """

    def __init__(
        self,
        num_targets: int,
        ch: int = 32,
        ch_mult: Sequence[int] = (1, 2, 3, 4),
        num_res_blocks: int = 1,
        gn_groups: int = 16,
        embedding_padding_idx: int | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        for c in (ch, *(ch * m for m in ch_mult)):
            if c % gn_groups != 0:
                raise ValueError(
                    f"GroupNorm with {gn_groups} groups needs channel counts divisible by {gn_groups}; "
                    f"ch={ch}, ch_mult={ch_mult} gives {c}"
                )
        self.num_targets = int(num_targets)
        self.ch, self.ch_mult, self.num_res_blocks = ch, ch_mult, num_res_blocks
        self.gn_groups, self.in_channels = gn_groups, in_channels
        self.embedding_padding_idx = embedding_padding_idx
        tdim = 4 * ch
        self.tdim = tdim
        self.target_embedding = TargetEmbedding(num_targets, ch, tdim, embedding_padding_idx)
        self.head = nn.Sequential(_conv(in_channels, ch, 5), nn.GELU(), nn.GroupNorm(gn_groups, ch))

        self.down = nn.ModuleList()
        skip_ch = [ch]
        now = ch
        for i, m in enumerate(ch_mult):
            out = ch * m
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(now, out, tdim, attn=True, groups=gn_groups))
                now = out
                skip_ch.append(now)
            if i != len(ch_mult) - 1:
                self.down.append(DownSample(now))
                skip_ch.append(now)
        self.middle = nn.ModuleList(
            [
                ResBlock(now, now, tdim, attn=True, groups=gn_groups),
                ResBlock(now, now, tdim, attn=False, groups=gn_groups),
            ]
        )
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            out = ch * m
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(skip_ch.pop() + now, out, tdim, attn=False, groups=gn_groups))
                now = out
            if i != 0:
                self.up.append(UpSample(now, gn_groups))
        self.gct = GCT(now)
        self.tail = nn.Sequential(nn.GroupNorm(gn_groups, now), nn.GELU(), _conv(now, in_channels, 3))
        self.reset_parameters()

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def reset_parameters(self) -> None:
        """Official ``Generator.py:Generator.weight_init``: Conv2d Xavier-uniform / bias 0.1, GroupNorm 1 / 0,
        Linear N(0, 0.01^2) / bias 0; ConvTranspose2d and Embedding keep PyTorch's defaults."""
        for mod in self.modules():
            if type(mod) is nn.Conv2d:
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.constant_(mod.bias, 0.1)
            elif isinstance(mod, nn.GroupNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, 0.0, 0.01)
                nn.init.zeros_(mod.bias)

    # ------------------------------------------------------------------ parameter groups
    def res_blocks(self) -> list[ResBlock]:
        """Every ResBlock (down, middle, up) in forward order."""
        return [m for m in (*self.down, *self.middle, *self.up) if isinstance(m, ResBlock)]

    def conditioning_parameters(self) -> Iterator[nn.Parameter]:
        """Stage-1 parameters: the target embedding and every ResBlock's ``target_proj``."""
        yield from self.target_embedding.parameters()
        for rb in self.res_blocks():
            yield from rb.target_proj.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Stage-2 parameters: everything except :meth:`conditioning_parameters`."""
        cond = {id(p) for p in self.conditioning_parameters()}
        for p in self.parameters():
            if id(p) not in cond:
                yield p

    def conditioning_vectors(self) -> tuple[Tensor, list[Tensor]]:
        """``E = TargetEmbedding(0..K-1)`` and ``P_b = target_proj_b(E)`` for every ResBlock (stage 1)."""
        idx = torch.arange(self.num_targets, device=self.target_embedding.embedding.weight.device)
        e = self.target_embedding(idx)
        return e, [rb.target_proj(e) for rb in self.res_blocks()]

    # ------------------------------------------------------------------ forward
    def check_inputs(self, x: Tensor, target_idx: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {shape}")
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"H and W must be divisible by {f} (2^(len(ch_mult)-1)), got {tuple(x.shape[-2:])}"
            )
        if not isinstance(target_idx, Tensor) or target_idx.ndim != 1 or target_idx.shape[0] != x.shape[0]:
            raise ValueError(f"target_idx must be a LongTensor of shape ({x.shape[0]},)")
        if target_idx.is_floating_point() or target_idx.dtype == torch.bool:
            raise ValueError(f"target_idx must be integer indices, got dtype {target_idx.dtype}")
        if target_idx.numel() and (int(target_idx.min()) < 0 or int(target_idx.max()) >= self.num_targets):
            raise ValueError(
                f"target_idx must lie in [0, {self.num_targets}), got range "
                f"[{int(target_idx.min())}, {int(target_idx.max())}]"
            )

    def forward(self, x: Tensor, target_idx: Tensor) -> Tensor:
        self.check_inputs(x, target_idx)
        return self.body(x, target_idx)

    def body(self, x: Tensor, target_idx: Tensor) -> Tensor:
        """The forward pass without input checks (what ``torch.compile`` traces)."""
        emb = self.target_embedding(target_idx.long())
        h = self.head(x)
        skips = [h]
        for mod in self.down:
            h = mod(h, emb)
            skips.append(h)
        for mod in self.middle:
            h = mod(h, emb)
        for mod in self.up:
            if isinstance(mod, ResBlock):
                h = mod(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = mod(h, emb)
        h = self.tail(self.gct(h))
        return (torch.tanh(h) + 1.0) / 2.0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def size_mb(self) -> float:
        """Size of the parameters in MiB (2^20 bytes; 16.78 MiB for the default layout)."""
        return sum(p.numel() * p.element_size() for p in self.parameters()) / 2**20

    def extra_repr(self) -> str:
        return (
            f"num_targets={self.num_targets}, ch={self.ch}, ch_mult={self.ch_mult}, "
            f"num_res_blocks={self.num_res_blocks}, params={self.num_parameters():,}"
        )


def generator_kwargs(gen: EsmaGenerator) -> dict:
    """Constructor arguments that rebuild ``gen`` (stored next to its weights)."""
    return {
        "num_targets": gen.num_targets,
        "ch": gen.ch,
        "ch_mult": list(gen.ch_mult),
        "num_res_blocks": gen.num_res_blocks,
        "gn_groups": gen.gn_groups,
        "embedding_padding_idx": gen.embedding_padding_idx,
        "in_channels": gen.in_channels,
    }


GENERATOR_FORMAT = "esma-generator-v2"


def save_generator(path, gen: EsmaGenerator, class_ids: Sequence[int] | None = None, **extra):
    """Write ``gen`` as safetensors: its weights, plus the constructor arguments (``config``), the class
    ids it was trained for and any JSON-able ``extra`` (stage, epoch, ...) as metadata (ours).
    :func:`load_generator` rebuilds it without running code."""
    from .weights import write_weights

    ids = None if class_ids is None else [int(c) for c in class_ids]
    return write_weights(
        path, gen.state_dict(), GENERATOR_FORMAT, config=generator_kwargs(gen), class_ids=ids, extra=extra
    )


def _legacy_generator(obj) -> tuple[dict, dict]:
    """A ``torch.save`` generator dict of package version 0.1 (``format: esma-generator-v1``)."""
    if not isinstance(obj, dict) or obj.get("format") != "esma-generator-v1":
        raise ValueError("not an ESMA generator (neither safetensors nor an esma-generator-v1 dict)")
    extra = {k: v for k, v in obj.items() if k not in ("format", "kwargs", "state_dict", "class_ids")}
    return dict(obj["state_dict"]), {
        "config": obj["kwargs"],
        "class_ids": obj.get("class_ids"),
        "extra": extra,
    }


def load_generator(path, map_location: str | torch.device = "cpu") -> tuple[EsmaGenerator, list[int] | None]:
    """Rebuild a generator written by :func:`save_generator`; returns ``(generator, class_ids)``.

    Older ``.pt`` files are read with ``weights_only=True``; a damaged, foreign or code-carrying file
    raises :class:`~papers_shared.errors.CheckpointError` naming it.
    """
    from papers_shared.errors import CheckpointError

    from .weights import read_weights

    tensors, meta = read_weights(
        path, GENERATOR_FORMAT, "ESMA generator", map_location, legacy=_legacy_generator
    )
    try:
        gen = EsmaGenerator(**meta["config"])
        gen.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot rebuild the ESMA generator ({first})") from None
    return gen.to(map_location), meta.get("class_ids")
