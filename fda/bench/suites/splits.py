"""Seeded, class-balanced, disjoint train/validation/test splits; dataset files on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")


def balanced_split(labels: Sequence[int] | np.ndarray, counts: dict[str, int], seed: int,
                   exclude: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Indices into ``labels`` for each split, with exactly ``counts[split]`` items of every class.

    Per class, the candidate indices (minus ``exclude``) are shuffled by one seeded generator and
    cut in order train | validation | test, so the splits are disjoint. Each split is then shuffled.
    Raises ``ValueError`` if a class has too few items.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    need = sum(counts.values())
    banned = np.zeros(len(labels), dtype=bool)
    if exclude is not None and len(exclude):
        banned[np.asarray(exclude)] = True
    parts: dict[str, list[np.ndarray]] = {s: [] for s in counts}
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & ~banned)
        if len(idx) < need:
            raise ValueError(f"class {c} has {len(idx)} items, {need} needed for splits {counts}")
        idx = rng.permutation(idx)[:need]
        start = 0
        for s, n in counts.items():
            parts[s].append(idx[start:start + n])
            start += n
    return {s: rng.permutation(np.concatenate(p)) for s, p in parts.items()}


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` (whole), on error it is
    deleted. A reader never sees a half-written directory."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like a plain mkdir
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_dataset_dict(dd: "datasets.DatasetDict", path: Path) -> None:
    """``dd.save_to_disk(path)`` atomically, without progress bars."""
    import datasets  # noqa: PLC0415

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with atomic_dir(path) as tmp:
            dd.save_to_disk(str(tmp))
    finally:
        if was_on:
            datasets.enable_progress_bars()
