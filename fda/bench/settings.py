"""Typed suite settings: a dataclass per suite, validated from the workflow config's dict.

An unknown key or a value of the wrong type is a ``SettingsError`` (a ``ValueError``) that lists
the valid keys with their types and defaults, so a typo in ``config.yaml`` fails at once.

A field may state its range in its metadata, next to its help text: ``ge`` (>=), ``gt`` (>) and
``le`` (<=), e.g. ``field(default=64, metadata={"help": "...", "ge": 1})``. ``coerce`` checks the
range of every given value (a bounded float must also be finite), and ``check_ranges`` checks a
built settings object (call it from ``__post_init__``), so the bound is stated once.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar


class SettingsError(ValueError):
    """Unknown suite, unknown settings key, or a value of the wrong type."""


T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is tuple:  # tuple[X, ...] is a list in YAML/JSON
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    args = ", ".join(_type_name(a) for a in typing.get_args(tp))
    return f"{getattr(origin, '__name__', str(origin))}[{args}]"


def schema(cls: type) -> dict[str, dict[str, Any]]:
    """``{key: {"type": "int", "default": 3, "help": "..."}}`` for a settings dataclass."""
    hints = _field_types(cls)
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            default = list(default)
        out[f.name] = {"type": _type_name(hints[f.name]), "default": default, "help": f.metadata.get("help", "")}
    return out


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against ``tp`` (int, float, str, bool, tuple/list of those, ``X | None``,
    ``Literal[...]``, dict); ints pass as floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(name, value, option)
            except SettingsError as err:
                errors.append(str(err))
        raise SettingsError(f"setting '{name}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise SettingsError(f"setting '{name}': expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"setting '{name}': expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(name, v, item_tp) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"setting '{name}': expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"setting '{name}': expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(name, v, item_tp) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads `1e-5`, without a dot, as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise SettingsError(f"setting '{name}': expected bool, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise SettingsError(f"setting '{name}': expected {tp.__name__}, got bool {value!r}")
    if not isinstance(value, tp):
        raise SettingsError(f"setting '{name}': expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


#: metadata keys that state a field's range, and how each reads in a message
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<="}


def range_text(metadata: Any) -> str:
    """The range a field's metadata states, e.g. ``">= 1"`` or ``">= 0 and <= 1"``; empty if none."""
    return " and ".join(f"{op} {metadata[key]}" for key, op in _BOUNDS.items() if key in metadata)


def check_range(name: str, value: Any, metadata: Any) -> None:
    """Raise ``SettingsError`` if ``value`` is outside the range stated in ``metadata`` (``ge``,
    ``gt``, ``le``); a bounded float must be finite. ``None`` and non-numbers pass (types are
    checked elsewhere)."""
    wanted = range_text(metadata)
    if not wanted or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    inside = (math.isfinite(value)
              and ("ge" not in metadata or value >= metadata["ge"])
              and ("gt" not in metadata or value > metadata["gt"])
              and ("le" not in metadata or value <= metadata["le"]))
    if not inside:
        raise SettingsError(f"setting '{name}': must be {wanted}{' (finite)' if isinstance(value, float) else ''}, got {value!r}")


def check_ranges(settings: Any) -> None:
    """Check every field of a built settings dataclass against the range its metadata states."""
    for f in dataclasses.fields(settings):
        check_range(f.name, getattr(settings, f.name), f.metadata)


def parse(cls: type[T], values: dict[str, Any] | None, *, suite: str) -> T:
    """Build the settings dataclass ``cls`` from ``values`` (missing keys take their defaults)."""
    return cls(**coerce(cls, values, suite=suite))


def coerce(cls: type, values: dict[str, Any] | None, *, suite: str) -> dict[str, Any]:
    """``values`` checked against the fields of ``cls`` and converted (lists -> tuples, int -> float)."""
    values = dict(values or {})
    hints = _field_types(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        listing = ", ".join(f"{k} ({v['type']}, default {v['default']!r})" for k, v in schema(cls).items())
        raise SettingsError(f"suite '{suite}': unknown settings key(s) {unknown}; valid keys: {listing}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    for k, v in out.items():
        check_range(k, v, fields[k].metadata)
    return out
