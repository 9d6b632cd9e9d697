"""Uncertainty of table values from per-example outcomes: 95% intervals and paired differences.

Method (docs/statistics.md has the assumptions): a bootstrap over test examples and two seed
levels. Each of ``n_boot`` replicates draws

1. the test set: per task, n examples with replacement from the task's n test examples, one draw
   shared by every row (every evaluated model saw the same examples, so rows are paired);
2. the expert seeds: E expert seeds with replacement from a row's E expert seeds, drawn from
   uniforms shared by every row (rows with the same expert seeds draw the same ones, so they are
   paired by expert seed as well); and
3. within each drawn expert seed, the FDA seeds: k with replacement from the k FDA seeds that row
   ran on that expert seed (baseline rows: one), again from uniforms every row shares.

A row's replicate value for a task is the mean, over its drawn (expert seed, FDA seed) runs, of the
headline metric recomputed on the drawn examples; Avg is the mean over tasks of those. The interval
is the 2.5 and 97.5 percentiles of the replicates. A paired difference (FDA minus its init) is the
difference of two rows' replicates under the same draws: paired by test example and expert seed.
With one expert seed and one FDA seed only the test set is resampled. Values are on the metric's
own 0-1 scale; tables multiply by their display factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fda.bench.eval.outcomes import FIXED, Outcome, OutcomeError, OutcomeKey, full_key

#: (method, init, anchor_init, protocol): one table row; a three-part key is the ``fixed`` row's
#: (:func:`row_key`)
RowKey = tuple[str, str, str, str]
#: one row's outcomes: ``{expert_seed: {fda_seed: {task: outcome}}}``
Runs = Mapping[int, Mapping[int, Mapping[str, Outcome]]]
AVG = "Avg"
LEVEL = 0.95


@dataclass(frozen=True)
class Draws:
    """The shared resampling plan: ``examples[task]``: [B, n_task] int32 indices into the task's test
    examples; ``seed_uniforms``: [B, E_max, k_max] uniforms in [0, 1) that pick FDA seeds (slot j of
    the expert-seed draw uses ``[:, j, :]``); ``expert_uniforms``: [B, E_max] uniforms that pick
    expert seeds."""

    examples: dict[str, np.ndarray]
    seed_uniforms: np.ndarray
    expert_uniforms: np.ndarray

    @property
    def n_boot(self) -> int:
        return int(self.seed_uniforms.shape[0])


@dataclass(frozen=True)
class SeedCount:
    """How many seeds are behind a row: ``expert`` expert seeds, ``fda`` FDA seeds per expert seed
    (the most any of its expert seeds has; 1 for baseline and reference rows)."""

    expert: int
    fda: int

    def __str__(self) -> str:
        return f"{self.expert}×{self.fda}"


def row_key(key: tuple) -> RowKey:
    """A table row's key with its protocol (three parts: the ``fixed`` row)."""
    return (*key, FIXED) if len(key) == 3 else tuple(key)  # type: ignore[return-value]


class RowMap(dict):
    """A dict keyed by :data:`RowKey` that also answers three-part keys (fixed rows), as callers
    written before protocols ask."""

    def __getitem__(self, key):
        return super().__getitem__(row_key(key))

    def __contains__(self, key) -> bool:
        return isinstance(key, tuple) and super().__contains__(row_key(key))

    def get(self, key, default=None):
        return super().get(row_key(key), default) if isinstance(key, tuple) else default


def by_row(outcomes: Mapping[OutcomeKey, Outcome]) -> dict[RowKey, dict[int, dict[int, dict[str, Outcome]]]]:
    """``{(method, init, anchor_init, protocol): {expert_seed: {seed: {task: outcome}}}}``."""
    rows: dict[RowKey, dict[int, dict[int, dict[str, Outcome]]]] = {}
    for key, o in outcomes.items():
        method, init, anchor_init, expert_seed, seed, task, protocol = full_key(key)
        runs = rows.setdefault((method, init, anchor_init, protocol), {})
        runs.setdefault(int(expert_seed), {}).setdefault(int(seed), {})[task] = o
    return rows


def seed_count(runs: Runs) -> SeedCount:
    """The expert and FDA seeds behind one row's ``runs``."""
    return SeedCount(len(runs), max((len(seeds) for seeds in runs.values()), default=0))


def make_draws(outcomes: Mapping[OutcomeKey, Outcome], tasks: Sequence[str], n_boot: int = 1000,
               seed: int = 0) -> Draws:
    """One resampling plan for every row of a table (deterministic for a given ``seed``; with one
    expert seed, the same test-set and FDA-seed draws as before expert seeds existed).
    Raises :class:`OutcomeError` if two evaluations of a task saw different numbers of examples."""
    sizes: dict[str, int] = {}
    for key, o in outcomes.items():
        method, init, anchor, e, s, task, _protocol = full_key(key)
        n = len(o.predictions)
        if sizes.setdefault(task, n) != n:
            raise OutcomeError(f"task {task!r}: {method} {init} {anchor} expert seed {e} seed {s} has {n} test examples, "
                               f"another evaluation {sizes[task]}; paired intervals need the same test set "
                               "(same eval_limit and data seed)")
    rng = np.random.default_rng(seed)
    # int32 indices: half the memory of the default int64 (GLUE's validation sets: ~60k examples x B)
    # drawn in sorted task order, so the draws depend on the task set, not on the column order:
    # a table and `fda-bench claims` over the same outcomes give the same intervals
    examples = {t: rng.integers(0, sizes[t], size=(n_boot, sizes[t]), dtype=np.int32) for t in sorted(tasks) if t in sizes}
    counts = [seed_count(runs) for runs in by_row(outcomes).values()]
    e_max = max([c.expert for c in counts], default=1)
    k_max = max([c.fda for c in counts], default=1)
    seed_uniforms = rng.random((n_boot, e_max, k_max))
    return Draws(examples, seed_uniforms, rng.random((n_boot, e_max)))


def _picks(uniforms: np.ndarray, k: int) -> np.ndarray:
    """Positions in 0..k-1 from uniforms in [0, 1) (same shape)."""
    return np.minimum((uniforms * k).astype(int), k - 1)


def _task_replicates(runs: Runs, task: str, draws: Draws) -> np.ndarray:
    """[B] replicates of one task: per replicate, E expert-seed slots, each an expert seed drawn
    from the row's and the mean over k FDA seeds drawn from those it ran on that expert seed."""
    examples = draws.examples[task]
    order = sorted(runs)
    n_e = len(order)
    drawn = _picks(draws.expert_uniforms[:, :n_e], n_e)  # [B, E]: which expert seed fills each slot
    total = np.zeros(drawn.shape)
    for pos, e in enumerate(order):
        seeds = sorted(runs[e])
        k = len(seeds)
        per_seed = np.stack([runs[e][s][task].resampled(examples) for s in seeds], axis=1)  # [B, k]
        pick = _picks(draws.seed_uniforms[:, :n_e, :k], k)  # [B, E, k]
        by_slot = np.take_along_axis(np.broadcast_to(per_seed[:, None, :], pick.shape), pick, axis=2).mean(axis=2)
        total += np.where(drawn == pos, by_slot, 0.0)  # [B, E]
    return total.mean(axis=1)


def replicates(runs: Runs, tasks: Sequence[str], draws: Draws) -> dict[str, np.ndarray]:
    """One row's bootstrap replicates: ``{task or "Avg": [B] values}`` from its ``runs``
    (``{expert_seed: {seed: {task: outcome}}}``); a task missing for any run, and Avg unless every
    task is present, is left out."""
    out: dict[str, np.ndarray] = {}
    for task in tasks:
        if task not in draws.examples or any(task not in o for seeds in runs.values() for o in seeds.values()):
            continue
        out[task] = _task_replicates(runs, task, draws)
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
                  seed: int = 0, normalize_by: tuple | None = ("individual", "", "")) -> "RowIntervals":
    """Every row's replicates under one plan (see the module docstring)."""
    draws = make_draws(outcomes, tasks, n_boot, seed)
    rows = by_row(outcomes)
    reps = RowMap({key: replicates(runs, tasks, draws) for key, runs in rows.items()})
    return RowIntervals(reps, RowMap({key: seed_count(runs) for key, runs in rows.items()}), tasks,
                        row_key(normalize_by) if normalize_by else None)


@dataclass
class RowIntervals:
    """Bootstrap replicates of every row: ``reps[row][column]`` [B]; ``n_seeds[row]``: its expert
    and FDA seeds. Rows are :data:`RowKey`s; the methods also take three-part keys (fixed rows)."""

    reps: dict[RowKey, dict[str, np.ndarray]]
    n_seeds: dict[RowKey, SeedCount]
    tasks: Sequence[str]
    normalize_by: RowKey | None = None

    def of(self, row: tuple, column: str) -> Interval | None:
        r = self.reps.get(row_key(row), {})
        return interval(r[column]) if column in r else None

    def normalized(self, row: tuple, column: str) -> Interval | None:
        """Interval of the row's value divided by the reference row's (per task, same draws, so the
        same expert seeds); Avg: the mean over tasks of those ratios."""
        ref = self.reps.get(row_key(self.normalize_by)) if self.normalize_by else None
        r = self.reps.get(row_key(row), {})
        if ref is None:
            return None
        cols = list(self.tasks) if column == AVG else [column]
        if not all(c in r and c in ref for c in cols):
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.mean([r[c] / ref[c] for c in cols], axis=0)
        ratios = ratios[np.isfinite(ratios)]
        return interval(ratios) if len(ratios) else None

    def paired_difference(self, row: tuple, baseline: tuple, column: str) -> Interval | None:
        """Interval of (row minus baseline) on ``column``, paired by test example and by the expert
        seed (and FDA seed) draws."""
        a, b = self.reps.get(row_key(row), {}), self.reps.get(row_key(baseline), {})
        if column not in a or column not in b:
            return None
        return interval(a[column] - b[column])
