"""Typed configuration trees filled from YAML presets and ``--set key=value`` overrides.

Each module owns the dataclass of the values it reads (``RolloutConfig`` beside the rollout
engine, ``ReopoldConfig`` beside the objectives, ...); a top-level config only nests them. This
module turns plain dictionaries into those dataclasses and back, and rejects anything it does
not understand with a :class:`ConfigError` whose message names the offending key:

* an unknown key (with the valid keys listed),
* a value of the wrong type (``train.steps: expected int, got 'ten'``),
* a value outside the field's declared range, NaN or infinity (``train.grad_clip must be > 0,
  got -1.0``; ranges are declared on the fields, see :mod:`reopold_agent.config_ranges`),
* a missing or unreadable YAML file, or YAML that is not a mapping.

Values are converted strictly: an ``int`` field accepts ``3`` but not ``3.5`` or ``"3"``; a
``float`` field accepts ints; ``Optional`` fields accept ``null``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .config_ranges import FieldError

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration value, key or file is wrong; the message names which."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from the UTF-8 file ``path``.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not YAML, or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` into (["section", "key"], value); value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    return key.split("."), value


def set_nested(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``data[k0][k1]...[kn] = value``, creating intermediate mappings."""
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``update`` (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating keys and types recursively.

    Raises:
        ConfigError: unknown key, wrong type, or a ``__post_init__`` check failed.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = _join(where, unknown[0])
        raise ConfigError(f"unknown config key {name!r} (valid keys here: {', '.join(sorted(fields))})")
    kwargs = {key: _convert(hints[key], value, _join(where, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except FieldError as exc:
        raise ConfigError(f"{_join(where, exc.field)} {exc.reason}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(_with_section(cls, where, str(exc))) from None


def _with_section(cls: type, where: str, message: str) -> str:
    """``message`` of a failed ``cls(...)`` with the field's dotted name in front: a leading
    ``ClassName.field`` becomes ``where.field``; other messages get ``where: `` in front."""
    own = f"{cls.__name__}."
    if message.startswith(own):
        return _join(where, message[len(own):])
    if where and message.startswith(f"{where}."):
        return message
    return f"{where or 'config'}: {message}"


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dictionary view of a config dataclass (for saving the resolved configuration)."""
    return dataclasses.asdict(config)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:  # an optional value: its own error names the key that is wrong
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return dict(value)
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "3e-4" as a string
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise ConfigError(f"{where}: unsupported config type {tp!r}")
    raise ConfigError(f"{where}: expected {tp.__name__}, got {_describe(value)}")


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    suffix = " or null" if type(None) in typing.get_args(tp) else ""
    return " or ".join(names) + suffix


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
