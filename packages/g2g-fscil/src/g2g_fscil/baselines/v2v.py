"""V2V / C-FSCIL baseline (spec §3.2, §4): the G2G model with ``interaction="v2v"``, no LGP, no CAG2G, and
C-FSCIL incremental mode 1 (no retraining), 2 (retrain + bipolarise) or 3 (retrain + nudging)."""

from __future__ import annotations

from g2g_fscil.config import G2GConfig

__all__ = ["v2v_config"]


def v2v_config(mcfg: G2GConfig, mode: int = 1) -> G2GConfig:
    from g2g_fscil.trainer import method_config

    if mode not in (1, 2, 3):
        raise ValueError(f"C-FSCIL mode must be 1, 2 or 3, got {mode}")
    return method_config(mcfg, "v2v", mode)
