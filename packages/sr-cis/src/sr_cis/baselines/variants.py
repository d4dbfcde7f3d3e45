"""SR-CIS ablations run as methods of the same runner (ours): each is a modified copy of the config."""

from __future__ import annotations

import copy

from sr_cis.config import SRCISConfig

__all__ = ["SR_CIS_VARIANTS", "variant_config"]

#: name -> what it changes
SR_CIS_VARIANTS = {
    "sr_cis": "the full system",
    "per_task_lora": "STM only: no restructuring, no CA-OAD / large model",
    "sr_cis_fast_only": "no CA-OAD / large model",
    "sr_cis_no_text": "class-name prompts instead of large-model descriptions",
    "sr_cis_random_route": "20 % of the stream routed at random instead of by CA-OAD",
    "sr_cis_no_lora": "no LoRA anywhere (frozen backbone, prototype heads only)",
    "sr_cis_pixel_replay": "replay from per-class pixel statistics of the task images (earlier variant)",
}


def variant_config(cfg: SRCISConfig, name: str) -> SRCISConfig:
    """The config of the SR-CIS variant ``name`` (a modified deep copy; ``cfg`` is untouched)."""
    if name not in SR_CIS_VARIANTS:
        raise ValueError(f"unknown SR-CIS variant {name!r}; choose from {list(SR_CIS_VARIANTS)}")
    out = copy.deepcopy(cfg)
    if name == "per_task_lora":
        out.restructure.period = None
        out.caoad.enabled = False
        out.slow.enabled = False
    elif name == "sr_cis_fast_only":
        out.caoad.enabled = False
        out.slow.enabled = False
    elif name == "sr_cis_no_text":
        out.text.describe_mode = "class_name_only"
    elif name == "sr_cis_random_route":
        out.caoad.random_fraction = 0.2
    elif name == "sr_cis_no_lora":
        out.stm.train_lora = False
        out.restructure.train_lora = False
    elif name == "sr_cis_pixel_replay":
        out.generator.gaussian_source = "task"
    return out
