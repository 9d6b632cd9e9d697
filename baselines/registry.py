"""The method registry: name -> ``MethodSpec`` (merge function + typed hyperparameter dataclass).

Each method module calls ``register(...)`` once at import. Registration is checked strictly (name
format, duplicates, every hyperparameter typed, defaulted and documented) so a broken method fails
at ``import baselines``, not halfway through a long merge.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import HyperparameterError, RegistrationError, UnknownMethodError

_NAME = re.compile(r"^[a-z][a-z0-9]*$")  # DESIGN.md: no underscores (or dashes) inside a name
_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``fn(inputs, hparams, progress) -> StateDict`` takes validated inputs (``inputs.MergeInputs``)
    and an instance of ``hparams``; ``summary`` is a one-line description.
    """

    name: str
    fn: Callable[..., dict]
    hparams: type
    summary: str

    def defaults(self) -> dict[str, Any]:
        """Default value of every hyperparameter."""
        return {f.name: f.default for f in dataclasses.fields(self.hparams)}

    def describe(self) -> str:
        """Multi-line human-readable list of the hyperparameters (type, default, help)."""
        lines = [f"{self.name}: {self.summary}"]
        fields = dataclasses.fields(self.hparams)
        own = [f for f in fields if f.name in self.hparams.__dict__.get("__annotations__", {})]
        for f in own + [f for f in fields if f not in own]:  # the method's own hyperparameters first
            lines.append(f"  {f.name}: {_type_name(_hints(self.hparams)[f.name])} = {f.default!r}  -- {f.metadata['help']}")
        return "\n".join(lines)


METHODS: dict[str, MethodSpec] = {}


def hparam(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A dataclass field with a default and a one-line help text (required by ``register``)."""
    if isinstance(default, (list, dict, set)):
        raise RegistrationError("use an immutable default (tuple) for hyperparameters")
    return dataclasses.field(default=default, metadata={"help": help})


def register(name: str, fn: Callable[..., dict], hparams: type, summary: str) -> MethodSpec:
    """Register a method; raise ``RegistrationError`` on anything malformed."""
    if not _NAME.match(name):
        raise RegistrationError(f"method name {name!r} must be lowercase letters/digits, no '_' or '-'")
    if name in METHODS:
        raise RegistrationError(f"method {name!r} registered twice ({METHODS[name].fn.__module__} and {fn.__module__})")
    if not callable(fn):
        raise RegistrationError(f"method {name!r}: fn is not callable")
    if not (isinstance(hparams, type) and dataclasses.is_dataclass(hparams)):
        raise RegistrationError(f"method {name!r}: hparams must be a dataclass type")
    if not summary or "\n" in summary:
        raise RegistrationError(f"method {name!r}: summary must be one non-empty line")
    hints = _hints(hparams)
    for f in dataclasses.fields(hparams):
        if f.default is dataclasses.MISSING:
            raise RegistrationError(f"method {name!r}: hyperparameter {f.name!r} has no default")
        if not f.metadata.get("help"):
            raise RegistrationError(f"method {name!r}: hyperparameter {f.name!r} has no help text (use hparam())")
        try:
            _check_type(f.default, hints[f.name], f.name)
        except HyperparameterError as err:
            raise RegistrationError(f"method {name!r}: default of {f.name!r} does not match its type ({err})") from None
    spec = MethodSpec(name, fn, hparams, summary)
    METHODS[name] = spec
    return spec


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The ``MethodSpec`` of ``name``; ``UnknownMethodError`` lists the valid names."""
    if not isinstance(name, str) or name not in METHODS:
        raise UnknownMethodError(f"unknown merging method {name!r}; valid methods: {', '.join(list_methods())}")
    return METHODS[name]


def build_hparams(spec: MethodSpec, given: Mapping[str, Any]) -> Any:
    """Instantiate ``spec.hparams`` from keyword values, checking names and types.

    Unknown names and wrong types raise ``HyperparameterError`` listing the valid hyperparameters.
    Range checks live in each dataclass's ``__post_init__`` (also ``HyperparameterError``).
    """
    fields = {f.name: f for f in dataclasses.fields(spec.hparams)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        valid = ", ".join(f"{n} ({_type_name(_hints(spec.hparams)[n])}, default {f.default!r})" for n, f in fields.items())
        raise HyperparameterError(f"method {spec.name!r} has no hyperparameter {', '.join(map(repr, unknown))}; valid: {valid}")
    hints = _hints(spec.hparams)
    values = {}
    for key, value in given.items():
        values[key] = _check_type(value, hints[key], key, method=spec.name)
    return spec.hparams(**values)


# --------------------------------------------------------------------------------------------
# Small runtime type checker for the few annotation shapes hyperparameters use:
# bool, int, float, str, Literal[...], X | None, tuple[str, ...].


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _check_type(value: Any, tp: Any, name: str, method: str | None = None) -> Any:
    """Return ``value`` (lists converted to tuples, ints to floats) or raise HyperparameterError."""
    where = f"method {method!r}: " if method else ""
    bad = HyperparameterError(f"{where}hyperparameter {name!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, type(typing.get_args(tp)[0])):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, name, method)
            except HyperparameterError:
                continue
        raise bad
    if origin is tuple:
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        # a bare string would silently iterate as characters: refuse it
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_check_type(v, item, f"{name}[{i}]", method) for i, v in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp in _SCALARS:
        if isinstance(value, tp):
            return value
        raise bad
    raise RegistrationError(f"unsupported hyperparameter annotation {tp!r} for {name!r}")
