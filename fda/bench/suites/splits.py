"""Seeded, class-balanced, disjoint train/validation/test splits; dataset files on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fda.io.atomic import atomic_dir

if TYPE_CHECKING:  # imported lazily where used: only jobs that write datasets pay for it
    import datasets

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
