"""Paper-scale runs (spec §5): CLIP ViT on 8 vision tasks, ViT-LoRA, RoBERTa on GLUE.

Checkpoints are resolved through ``papers_shared.data.hf.require_hub_model`` (a clear error naming the
download command when they are not cached) and datasets through ``load_hf_dataset``; nothing is
downloaded silently. Vision uses Hugging Face ``transformers`` CLIP checkpoints (FusionBench's
``tanganke/clip-vit-base-patch32_<task>`` fine-tuned vision towers on ``openai/clip-vit-base-patch32``);
the official pickled open_clip modules are not loadable without open_clip (see README, Deviations).
Zero-shot heads are built from the CLIP text tower with the class names of each dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from papers_shared.data.hf import load_hf_dataset, require_hub_model
from t_switch.config import ExperimentConfig

__all__ = [
    "CLIP_TEMPLATES",
    "DEFAULT_VISION_DATASETS",
    "GLUE_TASKS",
    "ClipEncoder",
    "glue_metric",
    "resolve",
    "run_experiment",
    "zeroshot_head",
]

logger = logging.getLogger(__name__)

DEFAULT_VISION_DATASETS = {
    "SUN397": "tanganke/sun397",
    "Cars": "tanganke/stanford_cars",
    "RESISC45": "tanganke/resisc45",
    "EuroSAT": "tanganke/eurosat",
    "SVHN": "ufldl-stanford/svhn:cropped_digits",
    "GTSRB": "tanganke/gtsrb",
    "MNIST": "ylecun/mnist",
    "DTD": "tanganke/dtd",
}
# Our own short prompt sets (one generic and one domain prompt per dataset).
CLIP_TEMPLATES = {
    "SUN397": ["a photo of a {}.", "a photo of the {}, a type of scene."],
    "Cars": ["a photo of a {}.", "a photo of the {}, a type of car."],
    "RESISC45": ["satellite imagery of {}.", "an aerial photo of {}."],
    "EuroSAT": ["a satellite photo of {}.", "a centered satellite image of {}."],
    "SVHN": ['a photo of the number: "{}".', "a street sign showing the digit {}."],
    "GTSRB": ['a traffic sign meaning "{}".', "a photo of the traffic sign {}."],
    "MNIST": ['a photo of the number: "{}".', "a handwritten digit {}."],
    "DTD": ["a photo of a {} texture.", "a close-up photo of a {} surface."],
}
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
_GLUE_KEYS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
}  # fmt: skip


def resolve(id_or_path: str, subfolder: str = "") -> str:
    """A local folder as is, else the cached snapshot of a hub id (clear error when absent)."""
    p = Path(id_or_path).expanduser()
    root = str(p) if p.exists() else require_hub_model(id_or_path)
    return str(Path(root) / subfolder) if subfolder else root


def _fmt(template: str, task: str) -> str:
    return template.format(task=task, task_lower=task.lower())


class ClipEncoder(nn.Module):
    """CLIP image encoder = vision tower + projection (``encode_image`` of open_clip), and a linear
    zero-shot head (normalised features, ``logit_scale``-scaled class embeddings) whose weight is
    replaced per task through ``overrides``."""

    def __init__(self, vision: nn.Module, projection: nn.Module, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.vision = vision
        self.projection = projection
        self.head = nn.Linear(projection.out_features, 1, bias=False)
        self.logit_scale = logit_scale

    def embed(self, pixel_values: Tensor) -> Tensor:
        return self.projection(self.vision(pixel_values=pixel_values).pooler_output)

    def forward(self, pixel_values: Tensor) -> Tensor:
        f = self.embed(pixel_values)
        return self.head(f / f.norm(dim=-1, keepdim=True))


@torch.no_grad()
def zeroshot_head(clip_model, tokenizer, classnames: list[str], templates: list[str]) -> Tensor:
    """``[C, D]``: ``logit_scale * normalize(mean_t normalize(text(t(c))))`` (task-vectors convention)."""
    rows = []
    for c in classnames:
        tok = tokenizer([t.format(c) for t in templates], padding=True, return_tensors="pt")
        e = clip_model.get_text_features(**tok)
        e = getattr(e, "pooler_output", e)
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        rows.append(m / m.norm())
    return torch.stack(rows) * clip_model.logit_scale.exp()


def glue_metric(task: str):
    """CoLA: Matthews corr.; STS-B: mean(Pearson, Spearman); others: accuracy (in %, spec §5)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import matthews_corrcoef

    if task == "cola":
        return lambda p, t: 100.0 * matthews_corrcoef(t.numpy(), p.numpy())
    if task == "stsb":
        return lambda p, t: 50.0 * (pearsonr(p.numpy(), t.numpy())[0] + spearmanr(p.numpy(), t.numpy())[0])
    return lambda p, t: 100.0 * float((p == t).float().mean())


def _dataset(spec: str, split: str):
    if ":" in spec and not Path(spec).exists():
        path, name = spec.split(":", 1)
        return load_hf_dataset(path, name, split=split)
    return load_hf_dataset(spec, split=split)


def _subset(ds, n: int):
    return ds.select(range(min(n, len(ds)))) if n and n > 0 else ds


def _vision_loader(ds, processor, batch_size: int, shuffle: bool = False, seed: int = 0):
    img_col = next(c for c in ("image", "img", "jpg") if c in ds.column_names)
    lab_col = next(c for c in ("label", "labels") if c in ds.column_names)

    def collate(rows):
        px = processor(images=[r[img_col].convert("RGB") for r in rows], return_tensors="pt")["pixel_values"]
        return px, torch.tensor([r[lab_col] for r in rows])

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g)


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Run one paper table; returns the results dict (also written as JSON by the CLI)."""
    if cfg.kind == "glue":
        return _run_glue(cfg)
    return _run_vit(cfg)


def _clip_parts(cfg: ExperimentConfig):
    from transformers import AutoProcessor, CLIPModel

    path = resolve(cfg.pretrained)
    clip = CLIPModel.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    return clip, processor


def _run_vit(cfg: ExperimentConfig) -> dict:
    import copy

    from transformers import CLIPVisionModel

    from t_switch.experiment import run_merging
    from t_switch.task_vector import lora_task_vector, task_vector

    clip, processor = _clip_parts(cfg)
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    enc = ClipEncoder(vision, clip.visual_projection, float(clip.logit_scale.exp())).eval()
    datasets = {**DEFAULT_VISION_DATASETS, **cfg.datasets}
    heads, evals, queries, trains = {}, {}, {}, {}
    for t in cfg.tasks:
        test = _subset(_dataset(datasets[t], cfg.eval_split), cfg.eval_subset)
        train = _dataset(datasets[t], "train")
        names = train.features["label"].names
        heads[t] = {
            "head.weight": zeroshot_head(
                clip, processor.tokenizer, names, CLIP_TEMPLATES.get(t, ["a photo of a {}."])
            )
        }
        evals[t] = _vision_loader(test, processor.image_processor, cfg.batch_size)
        queries[t] = _vision_loader(
            train, processor.image_processor, cfg.auto.n_query, shuffle=True, seed=cfg.seed
        )
        trains[t] = train
    base_state = None
    if cfg.kind == "vit_lora":
        from peft import LoraConfig, get_peft_model

        from t_switch.merge import lora_zero_base

        lcfg = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), bias="none")  # fmt: skip
        tvs = {}
        for t in cfg.tasks:
            m = get_peft_model(copy.deepcopy(enc), lcfg)
            _train_lora(
                m,
                heads[t],
                trains[t],
                processor.image_processor,
                cfg,
                Path(cfg.out_dir) / cfg.name / f"lora_{t}",
            )
            tvs[t] = lora_task_vector(m)
        module = get_peft_model(copy.deepcopy(enc), lcfg).eval()
        base_state = lora_zero_base(module)
        heads = {t: {f"base_model.model.{k}": v for k, v in h.items()} for t, h in heads.items()}
    else:
        module = enc
        tvs = {}
        for t in cfg.tasks:
            ft = CLIPVisionModel.from_pretrained(
                resolve(_fmt(cfg.finetuned, t), _fmt(cfg.finetuned_subfolder, t))
            )
            tvs[t] = task_vector(enc, _prefixed(ft.state_dict(), enc, "vision."), exclude=cfg.switch.exclude)
            del ft
    feat = (lambda x: module.base_model.model.embed(x)) if cfg.kind == "vit_lora" else enc.embed
    return run_merging(
        module, tvs, evals, cfg.switch, cfg.auto, cfg.baselines, cfg.stages, overrides=heads,
        query_loaders=queries, feature_fn=feat, base_state=base_state, pulse_ratios=cfg.pulse_ratios,
        model_numel=sum(p.numel() for p in enc.vision.parameters()),
    )  # fmt: skip


def _prefixed(ft_state: Mapping[str, Tensor], module: nn.Module, prefix: str) -> dict[str, Tensor]:
    """The module's state with ``prefix + name`` replaced by the fine-tuned tensors."""
    out = {n: p.detach() for n, p in module.named_parameters()}
    for k, v in ft_state.items():
        if prefix + k in out:
            out[prefix + k] = v
    return out


def _train_lora(
    model, head: Mapping[str, Tensor], train_ds, image_processor, cfg: ExperimentConfig, out: Path
) -> None:
    """LoRA fine-tuning (spec §3.5): Adam, StepLR, CE, only LoRA factors trainable; atomic per-epoch
    checkpoints with resume; a finished run (``done.safetensors``) is reused."""
    from papers_shared.checkpoints import CheckpointManager, load_safetensors, save_safetensors

    done = out / "done.safetensors"
    lora_params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    if done.is_file():
        state, _ = load_safetensors(done)
        with torch.no_grad():
            for n, p in lora_params.items():
                p.copy_(state[n])
        return
    from tqdm.auto import tqdm

    from t_switch.evaluate import run_params

    for n, p in model.named_parameters():
        p.requires_grad_(n in lora_params)
    opt = torch.optim.Adam(lora_params.values(), lr=cfg.lora.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lora.step_size, gamma=cfg.lora.gamma)
    mgr = CheckpointManager(out / "ckpt")
    start = 0
    state = mgr.load_latest()
    if state is not None:
        model.load_state_dict(state["lora"], strict=False)
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start = state["epoch"] + 1
    ds = _subset(train_ds, cfg.lora.max_train_samples)
    loader = _vision_loader(ds, image_processor, cfg.lora.batch_size, shuffle=True, seed=cfg.seed)
    ov = {f"base_model.model.{k}": v for k, v in head.items()}
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start, cfg.lora.epochs):
        model.train()
        for x, y in tqdm(loader, desc=f"LoRA {out.name} epoch {epoch + 1}/{cfg.lora.epochs}"):
            opt.zero_grad()
            loss_fn(run_params(model, ov, x), y).backward()
            opt.step()
        sched.step()
        mgr.save(
            epoch,
            {
                "lora": {n: p.detach() for n, p in lora_params.items()},
                "optim": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch,
            },
        )
    model.eval()
    save_safetensors({n: p.detach() for n, p in lora_params.items()}, done)


def _run_glue(cfg: ExperimentConfig) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from t_switch.experiment import run_merging
    from t_switch.task_vector import task_vector

    path = resolve(cfg.pretrained)
    tok = AutoTokenizer.from_pretrained(path)
    pre = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tvs, heads, evals, queries, vals, metrics = {}, {}, {}, {}, {}, {}
    for t in cfg.tasks:
        if t not in GLUE_TASKS:
            raise ValueError(f"unknown GLUE task {t!r}; known: {GLUE_TASKS}")
        ft = AutoModelForSequenceClassification.from_pretrained(
            resolve(_fmt(cfg.finetuned, t), _fmt(cfg.finetuned_subfolder, t))
        )
        tvs[t] = task_vector(pre, ft, exclude=cfg.switch.exclude)
        heads[t] = {n: p.detach() for n, p in ft.named_parameters() if "classifier" in n}
        spec = cfg.datasets.get(t, f"nyu-mll/glue:{t}")
        test_split = "validation_matched" if t == "mnli" else "validation"
        train = _dataset(spec, "train").train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
        evals[t] = _text_loader(_subset(_dataset(spec, test_split), cfg.eval_subset), tok, t, cfg)
        queries[t] = _text_loader(train["train"].shuffle(seed=cfg.seed), tok, t, cfg)
        vals[t] = _text_loader(_subset(train["test"], cfg.eval_subset), tok, t, cfg)
        metrics[t] = glue_metric(t)
        del ft

    def feat(input_ids, attention_mask=None, **_):
        return pre.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    results = {}
    for t in cfg.tasks:  # per-task metric: run the driver task by task with that task's metric
        one = run_merging(
            pre, tvs, {t: evals[t]}, cfg.switch, cfg.auto, cfg.baselines, cfg.stages, overrides=heads,
            query_loaders=queries, feature_fn=feat, metric=metrics[t], pulse_ratios=cfg.pulse_ratios,
            val_loaders={t: vals[t]}, model_numel=sum(p.numel() for n, p in pre.named_parameters() if "classifier" not in n),
        )  # fmt: skip
        for method, scores in one.items():
            if isinstance(scores, dict) and t in scores:
                results.setdefault(method, {})[t] = scores[t]
            else:
                results[method] = scores
    for scores in results.values():
        if isinstance(scores, dict) and all(t in scores for t in cfg.tasks):
            scores["avg"] = sum(scores[t] for t in cfg.tasks) / len(cfg.tasks)
    return results


def _text_loader(ds, tok, task: str, cfg: ExperimentConfig):
    k1, k2 = _GLUE_KEYS[task]

    def collate(rows):
        a = [r[k1] for r in rows]
        b = [r[k2] for r in rows] if k2 else None
        enc = tok(a, b, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt")
        y = torch.tensor([r["label"] for r in rows], dtype=torch.float if task == "stsb" else torch.long)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, y

    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
