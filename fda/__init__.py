"""fda-bench: Functional Dual Anchors (FDA) model merging and its benchmark harness.

The public API is imported lazily (PEP 562): ``import fda`` alone does not import torch, so the
workflow's cheap jobs (cells, tables, figures) start fast. ``fda.merge``, ``fda.FDAConfig`` and
the rest load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "AdaptLog": "fda.adapt",
    "AdaptResult": "fda.adapt",
    "ConstructLog": "fda.anchors",
    "ConstructResult": "fda.anchors",
    "BlockAdapter": "fda.blocks",
    "UnknownModelFamilyError": "fda.blocks",
    "adapter_for": "fda.blocks",
    "register_adapter": "fda.blocks",
    "FDAConfig": "fda.config",
    "FDAConfigError": "fda.config",
    "adapt_block": "fda.api",
    "assemble": "fda.api",
    "construct_block": "fda.api",
    "load_anchors": "fda.api",
    "merge": "fda.api",
    "save_anchors": "fda.api",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fda' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
