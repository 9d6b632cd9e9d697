"""Task suites behind one registry: ``get_suite(name, settings) -> Suite``.

``SUITES`` lists the suite names; ``suite_settings_schema(name)`` gives each allowed settings key
with its type, default and help, so the workflow can document and validate its config.
An unknown suite name or settings key is a ``SettingsError`` (a ``ValueError``) listing the valid ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fda.bench.settings import SettingsError, coerce, schema

if TYPE_CHECKING:
    from fda.bench.suites.base import Suite

#: suite name -> (module, suite class, settings class). A suite's module is imported only when that
#: suite is asked for (PEP 562 below for the re-exported names): a job pays for its own suite's
#: imports, not for every suite's (the paper suites pull in tqdm, open_clip conversion, hub code).
_SUITES: dict[str, tuple[str, str, str]] = {
    "minitext": ("fda.bench.suites.minitext", "MinitextSuite", "MinitextSettings"),
    "minivision": ("fda.bench.suites.minivision", "MinivisionSuite", "MinivisionSettings"),
    # paper-scale suites (hub or local checkpoints; see docs/paper-suites.md)
    "vitb32": ("fda.bench.suites.clip_vision", "VitB32Suite", "ClipVisionSettings"),
    "vitb16": ("fda.bench.suites.clip_vision", "VitB16Suite", "ClipVisionSettings"),
    "vitl14": ("fda.bench.suites.clip_vision", "VitL14Suite", "ClipVisionSettings"),
    "robertab": ("fda.bench.suites.glue", "RobertaBaseSuite", "GlueSettings"),
    "robertal": ("fda.bench.suites.glue", "RobertaLargeSuite", "GlueSettings"),
    "llama13b": ("fda.bench.suites.llama", "LlamaSuite", "LlamaSettings"),
}
SUITES: tuple[str, ...] = tuple(_SUITES)

#: names re-exported from the submodules, imported on first use (``from fda.bench.suites import Suite``)
_LAZY = {
    "CorruptAssetError": "fda.bench.suites.assets",
    "MissingAssetError": "fda.bench.suites.assets",
    "Row": "fda.bench.suites.base",
    "StateDict": "fda.bench.suites.base",
    "Suite": "fda.bench.suites.base",
    "MinitextSettings": "fda.bench.suites.minitext",
    "MinitextSuite": "fda.bench.suites.minitext",
    "MinivisionSettings": "fda.bench.suites.minivision",
    "MinivisionSuite": "fda.bench.suites.minivision",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fda.bench.suites' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _classes(name: str) -> tuple[type[Suite], type]:
    """``(suite class, settings class)`` of suite ``name``, importing its module."""
    if name not in _SUITES:
        raise SettingsError(f"unknown suite {name!r}; valid suites: {list(SUITES)}")
    module_name, suite_cls, settings_cls = _SUITES[name]
    module = importlib.import_module(module_name)
    return getattr(module, suite_cls), getattr(module, settings_cls)


def get_suite(name: str, settings: dict[str, Any] | None = None) -> Suite:
    """The suite ``name`` configured by ``settings`` (missing keys take their defaults).

    ``settings`` may also be ``{"preset": "smoke", ...overrides}`` for the tiny variant.
    """
    suite_cls, settings_cls = _classes(name)
    settings = dict(settings or {})
    preset = settings.pop("preset", "default")
    if preset == "smoke":
        overrides = coerce(settings_cls, settings, suite=name)  # same key/type checks as the default preset
        return suite_cls(settings_cls.smoke(**overrides))
    if preset != "default":
        raise SettingsError(f"suite {name!r}: unknown preset {preset!r}; valid presets: ['default', 'smoke']")
    return suite_cls(settings)


def suite_family(name: str) -> str:
    """The block-adapter family of suite ``name``'s model (without building the suite)."""
    return _classes(name)[0].family


def suite_no_validation(name: str) -> str | None:
    """Why suite ``name`` has no selection (validation) split, or None when it has one (without
    building the suite; ``Suite.no_validation``)."""
    return _classes(name)[0].no_validation


def suite_settings_class(name: str) -> type:
    """The settings dataclass of suite ``name`` (its fields' types, defaults, help and ranges)."""
    return _classes(name)[1]


def suite_settings_schema(name: str) -> dict[str, dict[str, Any]]:
    """``{key: {"type", "default", "help"}}`` of suite ``name`` (plus the ``preset`` key)."""
    out = schema(_classes(name)[1])
    out["preset"] = {"type": "str", "default": "default", "help": "'default' or 'smoke' (tiny variant; other keys override it)"}
    return out


__all__ = ["SUITES", "CorruptAssetError", "MissingAssetError", "Row", "SettingsError", "StateDict", "Suite", "get_suite",
           "suite_family", "suite_no_validation", "suite_settings_class", "suite_settings_schema", "MinitextSettings", "MinivisionSettings", "MinitextSuite", "MinivisionSuite"]
