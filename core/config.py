"""Typed dataclass configs that round-trip through JSON, validated on load.

`from_dict(Cls, data)` builds a dataclass from plain JSON data, checking every field's
type against its annotation and rejecting unknown fields with a message that names the
field's path (`job.quantize.bits`). `to_dict(obj)` is the inverse. Supported annotations:
bool, int, float, str, None, Optional / `X | None`, Literal, list[X], tuple[X, ...],
dict[str, X] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import BadInput

T = TypeVar("T")


class ConfigError(BadInput):
    """A config document does not match its schema."""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number",
                "bool": "true or false", "list": "a list", "dict": "an object"}.get(
            tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(err)
        names = " or ".join(_type_name(o) for o in get_args(tp))
        raise ConfigError(f"{where} must be {names}, got {value!r}",
                          "fix the value in the job file")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}",
                              "pick one of the listed values")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where} must be null, got {value!r}", "fix the value in the job file")
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}", "fix the value in the job file")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {value!r}", "fix the value in the job file")
        key_tp, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}", "fix the value in the job file")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}", "fix the value in the job file")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}", "fix the value in the job file")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}", "fix the value in the job file")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one from its factory); None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def setting(default: Any, help: str = "", **meta: Any) -> Any:
    """A spec field with its help text (and other metadata: core/spec_args.py) where the CLI's
    flags and the window's forms read it; a list default is copied for each instance."""
    meta = {"help": help, **meta} if help else meta
    if default is dataclasses.MISSING:                  # a field every instance must give
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from JSON data; unknown or mistyped fields raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object, got {data!r}", "fix the job file")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}",
            f"known fields: {', '.join(fields)}")
    kwargs = {name: _convert(data[name], hints[name], f"{where}.{name}")
              for name in fields if name in data}
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where} is missing required field(s) {', '.join(missing)}",
                          "add them to the job file")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-JSON form of a config dataclass (lists for tuples)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["ConfigError", "field_default", "setting", "from_dict", "to_dict"]
_ = typing  # keep `typing` importable for annotations evaluated by get_type_hints
