"""Which code produced a file: the package version plus a hash of the method's source.

Caches (anchors, adapted blocks, resumable streaming merges) and the workflow's rerun triggers are
keyed by :func:`method_code_version` as well as by their settings and inputs, so an edit to the
method (``fda/*.py``, ``fda/io/``, ``baselines/``) invalidates what the old code computed instead
of being answered from a cache. The harness (``fda/bench/``) is left out on purpose: editing a
table or the CLI's help must not recompute every anchor.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

#: packages whose source makes up "the method"; ``fda.bench`` is excluded below
METHOD_PACKAGES = ("fda", "baselines")
HARNESS_DIR = "bench"  # fda/bench/: the harness


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} not found: is fda-bench installed (pip install -e .)?")
    return Path(next(iter(spec.submodule_search_locations)))


def method_source_files() -> list[tuple[str, Path]]:
    """``(name relative to the packages' parent, path)`` of every method source file, sorted."""
    files: list[tuple[str, Path]] = []
    for package in METHOD_PACKAGES:
        root = _package_dir(package)
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if package == "fda" and rel.parts[0] == HARNESS_DIR:
                continue
            files.append((f"{package}/{rel.as_posix()}", path))
    return sorted(files)


@functools.lru_cache(maxsize=1)
def method_code_hash() -> str:
    """SHA-256 (first 16 hex digits) over the names and bytes of :func:`method_source_files`."""
    digest = hashlib.sha256()
    for name, path in method_source_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def method_code_version() -> str:
    """``"<package version>+<method source hash>"``, e.g. ``0.1.0+3f2a…``."""
    from fda import __version__

    return f"{__version__}+{method_code_hash()}"
