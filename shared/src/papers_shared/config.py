"""Typed YAML configs with command-line overrides and one way to validate them.

Each package describes its configuration as a dataclass deriving from :class:`Config` (the peft/trl
pattern: ``@dataclass class XConfig(Config)``). Fields declared with :func:`field` carry a help text and
their constraints (``choices``, ``ge``/``gt``/``le``/``lt``); ``Literal`` types are choices too, and every
float must be finite unless the field says ``finite=False``. :class:`Config` checks all of this when the
object is built (in Python, from YAML, or by the CLI), so ``show-config`` and a run accept exactly the
same configs. Cross-field checks go in the config's own ``__post_init__`` after ``super().__post_init__()``.

:func:`load_config` reads a YAML file, applies ``key=value`` overrides (dotted keys reach nested
dataclasses), converts values to the field types and rejects unknown keys with an error that lists the
valid ones.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from papers_shared.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "config_to_dict",
    "describe_config",
    "field",
    "from_dict",
    "load_config",
    "parse_overrides",
    "save_config",
    "validate_fields",
]

T = TypeVar("T")

_BOUNDS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def field(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = True,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a help text and constraints, checked by :class:`Config` when built.

    ``ge``/``gt``/``le``/``lt`` bound a number (for a list, every element); ``choices`` lists the
    allowed values; ``finite=False`` lets a float be ``inf``/``nan``. ``help`` is what ``show-config
    --help`` prints, as ``metadata={"help": ...}`` in peft and trl configs.
    """
    meta = dict(kwargs.pop("metadata", None) or {})
    meta["help"] = help
    for name, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if bound is not None:
            meta[name] = bound
    if choices is not None:
        meta["choices"] = tuple(choices)
    meta["finite"] = finite
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta, **kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        found = [_literal_choices(a) for a in args]
        if found and all(c is not None for c in found):  # only Literals (and None): a closed set
            return tuple(x for c in found for x in c) + (
                (None,) if len(args) < len(typing.get_args(tp)) else ()
            )
    return None


class _FieldError(ConfigError):
    """A single field's rule broken; its message starts with the field name, so a prefix can be added."""


def _check_value(name: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> None:
    helptext = f" ({meta['help']})" if meta.get("help") else ""
    choices = meta.get("choices") or _literal_choices(tp)
    if choices is not None and value not in choices:
        raise _FieldError(f"{name}={value!r} is not one of {list(choices)}{helptext}")
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and meta.get("finite", True) and not math.isfinite(v):
            raise _FieldError(f"{name}={value!r}: must be a finite number{helptext}")
        for key, (ok, sym) in _BOUNDS.items():
            if key in meta and not ok(v, meta[key]):
                raise _FieldError(f"{name}={value!r}: must be {sym} {meta[key]}{helptext}")


def validate_fields(obj: Any) -> None:
    """Check every field of dataclass ``obj`` against its type's choices and its :func:`field` constraints.

    Nested dataclasses are checked recursively; a float field must be finite unless ``finite=False``.
    Raises :class:`ConfigError` naming the field, the value and the rule.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            try:
                validate_fields(value)
            except _FieldError as exc:
                raise _FieldError(f"{f.name}.{exc}") from None
            continue
        _check_value(f.name, value, hints.get(f.name, Any), f.metadata)


class Config:
    """Base class of every package config: validates its fields when built (see :func:`validate_fields`).

    Subclasses are ``@dataclass``; a subclass with cross-field checks defines ``__post_init__`` that
    calls ``super().__post_init__()`` first and raises :class:`ConfigError` with the reason.
    """

    def __post_init__(self) -> None:
        validate_fields(self)


def describe_config(cls: type, prefix: str = "") -> list[str]:
    """One line per (dotted) field: ``key: type = default  help [constraints]`` - the show-config help."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, Any)
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            lines.append(f"{key}: {tp.__name__}  {f.metadata.get('help', '')}".rstrip())
            lines += describe_config(tp, prefix=f"{key}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rules = [f"{_BOUNDS[k][1]} {f.metadata[k]}" for k in _BOUNDS if k in f.metadata]
        if f.metadata.get("choices"):
            rules.append(f"one of {list(f.metadata['choices'])}")
        generic = typing.get_args(tp) or not hasattr(tp, "__name__")
        tname = str(tp).replace("typing.", "") if generic else tp.__name__
        text = f"{key}: {tname} = {default}"
        if f.metadata.get("help"):
            text += f"  {f.metadata['help']}"
        if rules:
            text += f"  [{', '.join(rules)}]"
        lines.append(text)
    return lines


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except (ConfigError, TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, where) for v, a in zip(value, args))
        inner = args[0] if args else Any
        out = [_convert(v, inner, where) for v in value]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a float, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a float, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {cls.__name__}; "
            f"valid keys: {sorted(fields)}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
        if not isinstance(obj, Config):  # plain dataclasses get the same field checks
            validate_fields(obj)
        return obj
    except _FieldError as exc:
        raise _FieldError(f"{prefix}{exc}") from None
    except (TypeError, ValueError) as exc:  # a config's own __post_init__ (cross-field) validation
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] | None = None
) -> T:
    """Read ``path`` (YAML) into dataclass ``cls``, then apply overrides.

    A YAML file may name a ``_base_`` file (relative to itself), merged first, as in OpenMMLab configs.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    if overrides:
        over = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        data = _merge(data, over)
    return from_dict(cls, data)


def _read_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > 8:
        raise ConfigError(f"_base_ chain too deep at {path}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not parse YAML config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level")
    base = data.pop("_base_", None)
    if base is not None:
        data = _merge(_read_yaml(path.parent / base, depth + 1), data)
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    from papers_shared.checkpoints import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
