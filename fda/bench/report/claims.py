"""The paper's claims, checked on a run's per-example outcomes with paired intervals.

Each claim is a set of paired comparisons (row A minus row B on the Avg over tasks, paired by test
example, expert seed and FDA seed draws: :mod:`fda.bench.report.intervals`):

- ``fda >= init``: every FDA row against the init it started from (the pretrained row for FDA
  from the pretrained model) — the paper's "FDA improves the merge it starts from";
- ``fda(pretrained) >= ta``: FDA from the pretrained model against Task Arithmetic — the paper's
  "FDA alone beats the task-vector baseline";
- ``fda(pretrained) >= tsvm`` (beyond the paper's claims, shown for context): against TSV-M.

Rows are (method, init, anchor init, protocol) (docs/selection.md). An FDA row of either protocol
is compared with its init's fixed row (the model it started from); FDA from the pretrained
model is compared with every protocol's TA and TSV-M rows, a validated baseline's claim named
``... >= ta (validated)``: a baseline whose λ was chosen on validation data is the stronger one.

A comparison **holds** when its 95% interval lies above 0, is **contradicted** when it lies below
0, and is **unresolved** otherwise. Across several runs (other task subsets, data or expert seeds),
:func:`count_verdicts` says in how many each comparison held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fda.bench.eval.outcomes import Outcome, OutcomeKey
from fda.bench.report.intervals import AVG, RowKey, by_row, row_intervals, row_key

FIXED = "fixed"
PRETRAINED: RowKey = ("pretrained", "", "", FIXED)
#: (claim, the baseline FDA-from-pretrained is compared with: method, init, anchor init; every protocol)
AGAINST_BASELINES = (("fda(pretrained) >= ta", ("ta", "", "")), ("fda(pretrained) >= tsvm", ("tsvm", "", "")))
HOLDS, CONTRADICTED, UNRESOLVED = "holds", "contradicted", "unresolved"


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: ``row`` minus ``baseline`` on Avg (metric scale, e.g. 0.05 = 5
    points), with its 95% interval."""

    claim: str
    row: RowKey
    baseline: RowKey
    diff: float
    lo: float
    hi: float

    @property
    def verdict(self) -> str:
        return HOLDS if self.lo > 0 else CONTRADICTED if self.hi < 0 else UNRESOLVED


def _avg(runs: Mapping[int, Mapping[int, Mapping[str, Outcome]]], tasks: Sequence[str]) -> float:
    """A row's Avg as the tables compute it: per task the mean over its runs, then over tasks."""
    per_task = [np.mean([seeds[s][t].score() for seeds in runs.values() for s in seeds]) for t in tasks]
    return float(np.mean(per_task))


def pairs(rows: Iterable[RowKey]) -> list[tuple[str, RowKey, RowKey]]:
    """The (claim, row, baseline) comparisons that the rows present allow."""
    present = {row_key(r) for r in rows}
    out = []
    for row in sorted(r for r in present if r[0] == "fda"):
        # a validated FDA row starts from its init's fixed merge too (tables.init_row)
        init = PRETRAINED if row[1] == "pretrained" else (row[1], "", "", FIXED)
        if init in present:
            out.append(("fda >= init", row, init))
    for row in sorted(r for r in present if r[0] == "fda" and r[1] == "pretrained"):
        for claim, base in AGAINST_BASELINES:
            for b in sorted(r for r in present if r[:3] == base):
                out.append((claim if b[3] == FIXED else f"{claim} ({b[3]})", row, b))
    return out


def check_claims(outcomes: Mapping[OutcomeKey, Outcome], tasks: Sequence[str]) -> list[Comparison]:
    """Every comparison of :func:`pairs` on one run's outcomes (one suite)."""
    rows = by_row(outcomes)
    ints = row_intervals(outcomes, tasks)
    out = []
    for claim, row, base in pairs(rows):
        iv = ints.paired_difference(row, base, AVG)
        if iv is None:
            continue
        out.append(Comparison(claim, row, base, _avg(rows[row], tasks) - _avg(rows[base], tasks), iv.lo, iv.hi))
    return out


def count_verdicts(runs: Mapping[str, Sequence[Comparison]]) -> dict[tuple[str, RowKey, RowKey], dict[str, int]]:
    """Per comparison, how many of the ``runs`` (label -> comparisons) gave each verdict."""
    counts: dict[tuple[str, RowKey, RowKey], dict[str, int]] = {}
    for comparisons in runs.values():
        for c in comparisons:
            tally = counts.setdefault((c.claim, c.row, c.baseline), {HOLDS: 0, CONTRADICTED: 0, UNRESOLVED: 0})
            tally[c.verdict] += 1
    return counts


def _label(row: tuple) -> str:
    from fda.bench.report.tables import row_label

    row = row_key(row)
    return row_label(*row[:3], protocol=row[3])


def render_claims(runs: Mapping[str, Sequence[Comparison]], scale: float = 100.0) -> str:
    """A Markdown table: one line per comparison, one column per run (Δ and its interval, marked
    ✓ holds / ✗ contradicted / ~ unresolved) and the count of runs in which it held."""
    from fda.bench.report.tables import to_markdown

    labels = list(runs)
    mark = {HOLDS: "✓", CONTRADICTED: "✗", UNRESOLVED: "~"}
    found = {(c.claim, c.row, c.baseline): None for cs in runs.values() for c in cs}
    by_run = {label: {(c.claim, c.row, c.baseline): c for c in cs} for label, cs in runs.items()}
    counts = count_verdicts(runs)
    body = []
    for key in found:
        claim, row, base = key
        cells = []
        for label in labels:
            c = by_run[label].get(key)
            cells.append(f"{scale * c.diff:+.1f} [{scale * c.lo:+.1f}, {scale * c.hi:+.1f}] {mark[c.verdict]}" if c else "")
        tally = counts[key]
        n = sum(tally.values())
        body.append([claim, f"{_label(row)} − {_label(base)}", *cells,
                     f"{tally[HOLDS]}/{n} (✗ {tally[CONTRADICTED]})"])
    return to_markdown(["claim", "comparison", *labels, "holds in"], body)
