"""Task suites behind one registry: ``get_suite(name, settings) -> Suite``.

``SUITES`` lists the suite names; ``suite_settings_schema(name)`` gives each allowed settings key
with its type, default and help, so the workflow can document and validate its config.
An unknown suite name or settings key is a ``SettingsError`` (a ``ValueError``) listing the valid ones.
"""

from __future__ import annotations

from typing import Any

from fda.bench.suites.assets import CorruptAssetError, MissingAssetError
from fda.bench.suites.base import Row, StateDict, Suite
from fda.bench.suites.minitext import MinitextSettings, MinitextSuite
from fda.bench.suites.minivision import MinivisionSettings, MinivisionSuite
from fda.bench.settings import SettingsError, coerce, schema

_REGISTRY: dict[str, type[Suite]] = {"minitext": MinitextSuite, "minivision": MinivisionSuite}
_SETTINGS: dict[str, type] = {"minitext": MinitextSettings, "minivision": MinivisionSettings}

# Paper-scale suites (hub or local checkpoints; see docs/paper-suites.md)
from fda.bench.suites.clip_vision import ClipVisionSettings, VitB16Suite, VitB32Suite, VitL14Suite  # noqa: E402
from fda.bench.suites.glue import GlueSettings, RobertaBaseSuite, RobertaLargeSuite  # noqa: E402
from fda.bench.suites.llama import LlamaSettings, LlamaSuite  # noqa: E402

_REGISTRY.update({"vitb32": VitB32Suite, "vitb16": VitB16Suite, "vitl14": VitL14Suite,
                  "robertab": RobertaBaseSuite, "robertal": RobertaLargeSuite, "llama13b": LlamaSuite})
_SETTINGS.update({"vitb32": ClipVisionSettings, "vitb16": ClipVisionSettings, "vitl14": ClipVisionSettings,
                  "robertab": GlueSettings, "robertal": GlueSettings, "llama13b": LlamaSettings})
SUITES: tuple[str, ...] = tuple(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise SettingsError(f"unknown suite {name!r}; valid suites: {list(SUITES)}")


def get_suite(name: str, settings: dict[str, Any] | None = None) -> Suite:
    """The suite ``name`` configured by ``settings`` (missing keys take their defaults).

    ``settings`` may also be ``{"preset": "smoke", ...overrides}`` for the tiny variant.
    """
    _check_name(name)
    settings = dict(settings or {})
    preset = settings.pop("preset", "default")
    if preset == "smoke":
        overrides = coerce(_SETTINGS[name], settings, suite=name)  # same key/type checks as the default preset
        return _REGISTRY[name](_SETTINGS[name].smoke(**overrides))
    if preset != "default":
        raise SettingsError(f"suite {name!r}: unknown preset {preset!r}; valid presets: ['default', 'smoke']")
    return _REGISTRY[name](settings)


def suite_family(name: str) -> str:
    """The block-adapter family of suite ``name``'s model (without building the suite)."""
    _check_name(name)
    return _REGISTRY[name].family


def suite_settings_class(name: str) -> type:
    """The settings dataclass of suite ``name`` (its fields' types, defaults, help and ranges)."""
    _check_name(name)
    return _SETTINGS[name]


def suite_settings_schema(name: str) -> dict[str, dict[str, Any]]:
    """``{key: {"type", "default", "help"}}`` of suite ``name`` (plus the ``preset`` key)."""
    _check_name(name)
    out = schema(_SETTINGS[name])
    out["preset"] = {"type": "str", "default": "default", "help": "'default' or 'smoke' (tiny variant; other keys override it)"}
    return out


__all__ = ["SUITES", "CorruptAssetError", "MissingAssetError", "Row", "SettingsError", "StateDict", "Suite", "get_suite",
           "suite_family", "suite_settings_class", "suite_settings_schema", "MinitextSettings", "MinivisionSettings", "MinitextSuite", "MinivisionSuite"]
