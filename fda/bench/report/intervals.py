"""Uncertainty of table values from per-example outcomes: 95% intervals and paired differences.

Method (docs/statistics.md has the assumptions): a two-level bootstrap. Each of ``n_boot``
replicates draws

1. the test set: per task, n examples with replacement from the task's n test examples, one draw
   shared by every row (every evaluated model saw the same examples, so rows are paired); and
2. the seeds: k seeds with replacement from a row's k seeds, drawn from uniforms shared by every
   row (rows with the same seeds draw the same ones, so they are paired by seed as well).

A row's replicate value for a task is the mean, over its drawn seeds, of the headline metric
recomputed on the drawn examples; Avg is the mean over tasks of those. The interval is the 2.5
and 97.5 percentiles of the replicates. A paired difference (FDA minus its init) is the
difference of two rows' replicates under the same draws. With one seed only the test set is
resampled. Values are on the metric's own 0-1 scale; tables multiply by their display factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fda.bench.eval.outcomes import Outcome, OutcomeError, OutcomeKey

#: (method, init, anchor_init): one table row
RowKey = tuple[str, str, str]
AVG = "Avg"
LEVEL = 0.95


@dataclass(frozen=True)
class Draws:
    """The shared resampling plan: ``examples[task]``: [B, n_task] indices into the task's test
    examples; ``seed_uniforms``: [B, k_max] uniforms in [0, 1) that pick seeds."""

    examples: dict[str, np.ndarray]
    seed_uniforms: np.ndarray

    @property
    def n_boot(self) -> int:
        return int(self.seed_uniforms.shape[0])


def by_row(outcomes: Mapping[OutcomeKey, Outcome]) -> dict[RowKey, dict[int, dict[str, Outcome]]]:
    """``{(method, init, anchor_init): {seed: {task: outcome}}}``."""
    rows: dict[RowKey, dict[int, dict[str, Outcome]]] = {}
    for (method, init, anchor_init, seed, task), o in outcomes.items():
        rows.setdefault((method, init, anchor_init), {}).setdefault(int(seed), {})[task] = o
    return rows


def make_draws(outcomes: Mapping[OutcomeKey, Outcome], tasks: Sequence[str], n_boot: int = 1000,
               seed: int = 0) -> Draws:
    """One resampling plan for every row of a table (deterministic for a given ``seed``).
    Raises :class:`OutcomeError` if two evaluations of a task saw different numbers of examples."""
    sizes: dict[str, int] = {}
    for (method, init, anchor, s, task), o in outcomes.items():
        n = len(o.predictions)
        if sizes.setdefault(task, n) != n:
            raise OutcomeError(f"task {task!r}: {method} {init} {anchor} seed {s} has {n} test examples, another "
                               f"evaluation {sizes[task]}; paired intervals need the same test set (same eval_limit and data seed)")
    rng = np.random.default_rng(seed)
    examples = {t: rng.integers(0, sizes[t], size=(n_boot, sizes[t])) for t in tasks if t in sizes}
    k_max = max([len(seeds) for seeds in by_row(outcomes).values()], default=1)
    return Draws(examples, rng.random((n_boot, k_max)))


def replicates(seeds: Mapping[int, Mapping[str, Outcome]], tasks: Sequence[str], draws: Draws) -> dict[str, np.ndarray]:
    """One row's bootstrap replicates: ``{task or "Avg": [B] values}``; a task missing for any
    seed, and Avg unless every task is present, is left out."""
    order = sorted(seeds)
    k = len(order)
    pick = np.minimum((draws.seed_uniforms[:, :k] * k).astype(int), k - 1)  # [B, k] seed positions
    out: dict[str, np.ndarray] = {}
    for task in tasks:
        if task not in draws.examples or any(task not in seeds[s] for s in order):
            continue
        per_seed = np.stack([seeds[s][task].resampled(draws.examples[task]) for s in order], axis=1)  # [B, k]
        out[task] = np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
    if tasks and all(t in out for t in tasks):
        out[AVG] = np.mean([out[t] for t in tasks], axis=0)
    return out


@dataclass(frozen=True)
class Interval:
    """A 95% percentile interval of bootstrap replicates (metric scale)."""

    lo: float
    hi: float

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def interval(samples: np.ndarray, level: float = LEVEL) -> Interval:
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(lo), float(hi))


def row_intervals(outcomes: Mapping[OutcomeKey, Outcome], tasks: Sequence[str], *, n_boot: int = 1000,
                  seed: int = 0, normalize_by: RowKey | None = ("individual", "", "")) -> "RowIntervals":
    """Every row's replicates under one plan (see the module docstring)."""
    draws = make_draws(outcomes, tasks, n_boot, seed)
    rows = by_row(outcomes)
    reps = {key: replicates(seeds, tasks, draws) for key, seeds in rows.items()}
    return RowIntervals(reps, {key: len(seeds) for key, seeds in rows.items()}, tasks, normalize_by)


@dataclass
class RowIntervals:
    """Bootstrap replicates of every row: ``reps[row][column]`` [B]; ``n_seeds[row]``."""

    reps: dict[RowKey, dict[str, np.ndarray]]
    n_seeds: dict[RowKey, int]
    tasks: Sequence[str]
    normalize_by: RowKey | None = None

    def of(self, row: RowKey, column: str) -> Interval | None:
        r = self.reps.get(row, {})
        return interval(r[column]) if column in r else None

    def normalized(self, row: RowKey, column: str) -> Interval | None:
        """Interval of the row's value divided by the reference row's (per task, same draws);
        Avg: the mean over tasks of those ratios."""
        ref = self.reps.get(self.normalize_by) if self.normalize_by else None
        r = self.reps.get(row, {})
        if ref is None:
            return None
        cols = list(self.tasks) if column == AVG else [column]
        if not all(c in r and c in ref for c in cols):
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.mean([r[c] / ref[c] for c in cols], axis=0)
        ratios = ratios[np.isfinite(ratios)]
        return interval(ratios) if len(ratios) else None

    def paired_difference(self, row: RowKey, baseline: RowKey, column: str) -> Interval | None:
        """Interval of (row minus baseline) on ``column``, paired by test example and seed draw."""
        a, b = self.reps.get(row, {}), self.reps.get(baseline, {})
        if column not in a or column not in b:
            return None
        return interval(a[column] - b[column])
