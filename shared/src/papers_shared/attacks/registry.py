"""Attack presets by name: ``get_attack("tifgsm", model, eps=8/255, targeted=True)``.

Every preset module registers its classes with :func:`register_preset` (usable as a decorator), so
a config or a command line can name an attack instead of importing it, as in TransferAttack's and
torchattack's ``create_attack``. Names are lower case; ``-`` and ``_`` are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from .engine import IterativeAttack

__all__ = [
    "PRESETS",
    "attack_class",
    "create_attack",
    "get_attack",
    "list_attacks",
    "presets",
    "register_preset",
]

A = TypeVar("A", bound=type[IterativeAttack])

#: name -> attack class; filled by the preset modules (and by :func:`register_preset`).
PRESETS: dict[str, type[IterativeAttack]] = {"iterative": IterativeAttack}
presets = PRESETS


def _key(name: str) -> str:
    return str(name).lower().replace("-", "_")


def register_preset(name: str, cls: type[IterativeAttack] | None = None, *, overwrite: bool = False) -> Any:
    """Add an attack class under ``name``; ``@register_preset("name")`` works as a class decorator."""

    def add(c: A) -> A:
        if not (isinstance(c, type) and issubclass(c, IterativeAttack)):
            raise TypeError("cls must be a subclass of IterativeAttack")
        key = _key(name)
        if key in PRESETS and not overwrite:
            raise ValueError(f"preset {name!r} already registered (pass overwrite=True to replace it)")
        PRESETS[key] = c
        return c

    if cls is None:
        decorator: Callable[[A], A] = add
        return decorator
    return add(cls)


def list_attacks() -> list[str]:
    """The registered preset names, sorted."""
    return sorted(PRESETS)


def attack_class(name: str) -> type[IterativeAttack]:
    """The class registered under ``name``."""
    key = _key(name)
    if key not in PRESETS:
        raise ValueError(f"unknown attack preset {name!r}; available: {list_attacks()}")
    return PRESETS[key]


def get_attack(name: str, model: nn.Module, **kwargs: Any) -> IterativeAttack:
    """Build preset ``name`` on ``model``, e.g. ``get_attack("tifgsm", model, eps=8/255, targeted=True)``."""
    return attack_class(name)(model, **kwargs)


create_attack = get_attack
