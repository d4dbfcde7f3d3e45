"""Scenario Replay Module generators: text in, images out (paper: SDXL regenerates scenes from the stored
descriptions; settings ours).

* :class:`DiffusersSDXLGenerator`: SDXL base through ``diffusers`` (optional extra ``sr-cis[diffusion]``,
  imported lazily; a ``pipeline`` object can be passed in, e.g. a mock in tests).
* :class:`GaussianPixelGenerator`: the offline stand-in (ours), a per-class pixel mean + low-rank
  covariance keyed by the class name found in the prompt. Fitted once on a pre-training corpus and
  frozen (:meth:`~GaussianPixelGenerator.fit_corpus`), it plays the part of a pre-trained text-to-image
  model: it never sees the incremental tasks, and the memory holds only text. Fitted on each task's
  images instead (the earlier variant, ``generator.gaussian_source=task``), its statistics are image
  memory, counted as such in the storage report.

Both return a float tensor ``[N, C, out_size, out_size]`` in ``[0, 1]`` (the small model's input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from papers_shared.errors import UserError

__all__ = [
    "DiffusersSDXLGenerator",
    "MissingExtraError",
    "GaussianPixelGenerator",
    "ScenarioGenerator",
    "build_generator",
    "replay_seed",
]


class MissingExtraError(UserError, ImportError):
    """An optional dependency the config asks for is not installed (one line, exit 2 in the CLI)."""


def replay_seed(class_id: int, index: int, base: int = 0) -> int:
    """Deterministic per-image seed ``hash(class, index)`` (ours)."""
    return (int(base) * 1_000_003 + int(class_id) * 10_007 + int(index)) % (2**31 - 1)


@runtime_checkable
class ScenarioGenerator(Protocol):
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor: ...


def _check(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")


class GaussianPixelGenerator:
    """Per-class Gaussian over pixels with a rank-``rank`` covariance (offline stand-in for SDXL)."""

    def __init__(self, rank: int = 8, noise: float = 1.0) -> None:
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        self.rank = rank
        self.noise = float(noise)
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]] = {}
        #: fitted on a corpus and frozen (a stand-in for a pre-trained text-to-image model)
        self.frozen = False

    def fit_corpus(self, x: torch.Tensor, y: torch.Tensor, names: dict[int, str]) -> GaussianPixelGenerator:
        """Fit every class of a pre-training corpus ``(x, y)`` under its name, then freeze."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"corpus has {x.shape[0]} images but {y.shape[0]} labels")
        for c in sorted(torch.unique(y).tolist()):
            self.fit(names[int(c)], x[y == c])
        self.frozen = True
        return self

    def fit(self, name: str, x: torch.Tensor) -> None:
        """Fit the class ``name`` on images ``x`` ``[n, C, H, W]`` in ``[0, 1]``."""
        if self.frozen:
            raise RuntimeError("this generator was fitted on a corpus and is frozen")
        if x.ndim != 4 or x.shape[0] < 1:
            raise ValueError(f"need a non-empty [n, C, H, W] batch, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf")
        flat = x.reshape(x.shape[0], -1).double()
        mean = flat.mean(0)
        k = min(self.rank, max(flat.shape[0] - 1, 0))
        if k > 0:
            _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
            factor = (vh[:k].T * (s[:k] / (flat.shape[0] - 1) ** 0.5)).float()
        else:
            factor = torch.zeros(flat.shape[1], 0)
        self.stats[name] = (mean.float(), factor, tuple(x.shape[1:]))

    def class_of(self, prompt: str) -> str:
        """The longest fitted class name that occurs in ``prompt``."""
        hits = [n for n in self.stats if n.lower() in prompt.lower()]
        if not hits:
            raise KeyError(f"no fitted class name occurs in prompt {prompt!r}; known: {sorted(self.stats)}")
        return max(hits, key=len)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        _check(prompts, seeds)
        out = []
        for p, s in zip(prompts, seeds):
            mean, factor, shape = self.stats[self.class_of(p)]
            g = torch.Generator().manual_seed(int(s))
            z = torch.randn(factor.shape[1], generator=g)
            out.append((mean + self.noise * (factor @ z)).clamp(0, 1).view(shape))
        if not out:
            raise ValueError("no prompts to generate from")
        return torch.stack(out)

    def nbytes(self) -> int:
        return sum(m.numel() * 4 + f.numel() * 4 for m, f, _ in self.stats.values())


class DiffusersSDXLGenerator:
    """SDXL text-to-image replay (paper: SDXL; ours: 30 steps, guidance 7.0, 1024^2 resized to ``out_size``)."""

    def __init__(
        self,
        model_id: str = "stabilityai/stable-diffusion-xl-base-1.0",
        steps: int = 30,
        guidance: float = 7.0,
        gen_size: int = 1024,
        out_size: int = 224,
        pipeline: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model_id = model_id
        self.steps = int(steps)
        self.guidance = float(guidance)
        self.gen_size = int(gen_size)
        self.out_size = int(out_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if pipeline is None:
            pipeline = self._load(model_id, dtype)
        self.pipeline = pipeline

    def _load(self, model_id: str, dtype: torch.dtype | None):
        try:
            from diffusers import StableDiffusionXLPipeline
        except ImportError as exc:
            raise MissingExtraError(
                "the SDXL scenario generator needs diffusers: pip install 'sr-cis[diffusion]' "
                "(or use generator.kind=gaussian, the offline stand-in)"
            ) from exc
        from papers_shared.mllm import resolve_model_path

        path = resolve_model_path(model_id)
        pipe = StableDiffusionXLPipeline.from_pretrained(path, torch_dtype=dtype)
        return pipe.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        import numpy as np

        _check(prompts, seeds)
        out = []
        for p, s in zip(prompts, seeds):
            g = torch.Generator(device=self.device).manual_seed(int(s))
            res = self.pipeline(
                prompt=p,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=self.gen_size,
                width=self.gen_size,
                generator=g,
            )
            img = res.images[0]
            arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
            t = arr.permute(2, 0, 1).unsqueeze(0)
            t = F.interpolate(t, size=(self.out_size, self.out_size), mode="bilinear", antialias=True)
            out.append(t[0].clamp(0, 1))
        return torch.stack(out)


def build_generator(cfg, device: str | torch.device | None = None):
    """The generator named by a :class:`~sr_cis.config.GeneratorConfig`."""
    if cfg.kind == "gaussian":
        return GaussianPixelGenerator(cfg.gaussian_rank, cfg.gaussian_noise)
    if cfg.kind == "sdxl":
        return DiffusersSDXLGenerator(
            cfg.model_id, cfg.steps, cfg.guidance, cfg.gen_size, cfg.out_size, device=device
        )
    raise ValueError(f"unknown generator kind {cfg.kind!r}; use 'gaussian' or 'sdxl'")
