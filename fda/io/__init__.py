"""Checkpoint input and output: the layer under the FDA method and the harness.

``fda.io.checkpoints`` reads safetensors files, HF directories (sharded too) and weights-only
pickles, lazily per tensor where asked, and writes atomically; ``sharded_writer`` writes HF-sharded
directories; ``streaming`` merges sharded checkpoints block by block (``stream_source`` reads
them); ``synthetic`` builds the small sharded checkpoints that tests and benchmarks use.

Nothing here imports the method (``fda.api`` and its modules) or the harness (``fda.bench``).
The common names are imported lazily (PEP 562), so ``import fda.io.atomic`` stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "CheckpointError": "fda.io.checkpoints",
    "LazyCheckpoint": "fda.io.checkpoints",
    "load_state_dict": "fda.io.checkpoints",
    "read_metadata": "fda.io.checkpoints",
    "save_state_dict": "fda.io.checkpoints",
    "atomic_path": "fda.io.atomic",
    "write_json_atomic": "fda.io.atomic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fda.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
