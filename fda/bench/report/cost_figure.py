"""Accuracy versus cost, per suite (``results/figures/{suite}-cost.{png,pdf}``): one point per
method row of the cost table (:func:`fda.bench.report.cost.cost_table`), Avg against wall time
and against estimated FLOPs, both on log axes; Pretrained and Individual as horizontal lines.

Error bars: by default the spread over seeds (min to max; none with one seed). Pass ``yerr``
([2, rows] distances below/above each Avg, the rows of the cost table, unscaled) to draw other
intervals: :func:`interval_errors` gives the 95% bootstrap intervals of
:mod:`fda.bench.report.intervals` (``fda-bench costs --outcomes``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from fda.bench.eval.outcomes import Outcome, OutcomeKey
from fda.bench.report.cost import cost_table, row_costs, write_cost_table
from fda.bench.report.figures import plt, save
from fda.bench.report.tables import AVG, build_table, scale_for

#: x axes: (column of the cost table, label)
AXES = (("wall_s", "wall time per run (s, log)"), ("flops", "estimated FLOPs (log)"))


def _spread(table: pd.DataFrame, low: str, high: str, centre: str) -> np.ndarray:
    """[2, rows] distances from ``centre`` to ``low``/``high`` (0 where missing)."""
    c = table[centre].to_numpy(float)
    lo = np.nan_to_num(c - table[low].to_numpy(float), nan=0.0).clip(min=0)
    hi = np.nan_to_num(table[high].to_numpy(float) - c, nan=0.0).clip(min=0)
    return np.vstack([lo, hi])


def with_intervals(table: pd.DataFrame, ints: Any) -> pd.DataFrame:
    """``table`` with ``Avg lo`` / ``Avg hi``: each row's 95% interval of Avg from ``ints``
    (a :class:`fda.bench.report.intervals.RowIntervals`; NaN where a row has none)."""
    got = [ints.of(tuple(k), AVG) for k in table[["method", "init", "anchor_init"]].itertuples(index=False)]
    return table.assign(**{f"{AVG} lo": [g.lo if g else math.nan for g in got],
                           f"{AVG} hi": [g.hi if g else math.nan for g in got]})


def interval_errors(table: pd.DataFrame) -> np.ndarray:
    """``yerr`` from the ``Avg lo`` / ``Avg hi`` columns of :func:`with_intervals` (0 where missing)."""
    return _spread(table, f"{AVG} lo", f"{AVG} hi", AVG)


#: marker per anchor init (FDA rows); baselines are squares
MARKERS = {"gauss": "o", "weight": "^", "taskspan": "D"}


def _colours(table: pd.DataFrame) -> list:
    """One colour per family: a baseline and the FDA rows that start from it share it."""
    families = list(dict.fromkeys(i if m == "fda" else m for m, i in table[["method", "init"]].itertuples(index=False)))
    cmap = plt.get_cmap("tab10")
    index = {f: k % 10 for k, f in enumerate(families)}
    return [cmap(index[i if m == "fda" else m]) for m, i in table[["method", "init"]].itertuples(index=False)]


def accuracy_vs_cost(table: pd.DataFrame, suite: str, scale: float, references: Mapping[str, float] | None = None,
                     yerr: np.ndarray | None = None) -> plt.Figure:
    """The figure for one suite. ``table``: :func:`~fda.bench.report.cost.cost_table` (Avg unscaled);
    ``scale``: display factor of Avg (100 for percent suites); ``references``: row label -> Avg
    (unscaled) drawn as horizontal lines (Pretrained, Individual); ``yerr``: see the module docstring.
    A baseline and the FDA rows started from it share a colour; the marker is the anchor init."""
    fig, axes = plt.subplots(1, len(AXES), figsize=(5.2 * len(AXES) + 2.6, 4.4), sharey=True)
    y = table[AVG].to_numpy(float) * scale
    err = (yerr if yerr is not None else _spread(table, f"{AVG} min", f"{AVG} max", AVG)) * scale
    xerr_wall = _spread(table, "wall_s min", "wall_s max", "wall_s")
    colours = _colours(table)
    handles: dict[str, Line2D] = {}
    for ax, (col, label) in zip(axes, AXES):
        x = table[col].to_numpy(float)
        ok = np.isfinite(x) & (x > 0) & np.isfinite(y)
        for j in np.flatnonzero(ok):
            r = table.iloc[j]
            marker = MARKERS.get(str(r["anchor_init"]), "o") if r["method"] == "fda" else "s"
            ax.errorbar(x[j], y[j], yerr=err[:, [j]], xerr=xerr_wall[:, [j]] if col == "wall_s" else None, fmt=marker,
                        color=colours[j], capsize=3, markersize=6, alpha=0.9)
            handles.setdefault(str(r["row"]), Line2D([], [], marker=marker, color=colours[j], linestyle="", markersize=6))
        for name, value in (references or {}).items():
            if value is not None and math.isfinite(value):
                ax.axhline(value * scale, color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(name, (0.01, value * scale), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                            va="bottom")
        if ok.any():
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"Avg ({'%' if scale == 100.0 else 'score'})")
    order = [str(r) for r in table["row"] if str(r) in handles]
    fig.legend([handles[r] for r in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    bars = "95% intervals" if yerr is not None else "min-max over seeds"
    fig.suptitle(f"{suite}: accuracy vs cost of one run (bars: {bars}; FLOPs: optimising methods only)", fontsize=10)
    fig.tight_layout()
    return fig


def write_cost_figure(table: pd.DataFrame, suite: str, scale: float, out_dir: str | os.PathLike,
                      references: Mapping[str, float] | None = None, yerr: np.ndarray | None = None) -> list[Path]:
    """``{out_dir}/{suite}-cost.png`` and ``.pdf``."""
    fig = accuracy_vs_cost(table, suite, scale, references, yerr)
    return save(fig, Path(out_dir) / f"{suite}-cost")


def write_costs(jobs: pd.DataFrame, cells: pd.DataFrame, suite: str, tasks: list[str],
                outcomes: Mapping[OutcomeKey, Outcome] | None, tables_dir: str | os.PathLike,
                figures_dir: str | os.PathLike) -> tuple[list[Path], int]:
    """``suite``'s cost table and accuracy-versus-cost figure from per-job costs
    (:func:`fda.bench.report.cost.job_costs`) and its result ``cells``; ``outcomes``: the cells'
    per-example outcomes for the accuracy's 95% intervals (None: seed spread). Returns the
    written paths and the number of method rows."""
    table = cost_table(row_costs(jobs), cells, suite, tasks)
    yerr = None
    if outcomes:  # the accuracy's intervals (docs/statistics.md), as in the suite's tables
        from fda.bench.report.intervals import row_intervals

        table = with_intervals(table, row_intervals(outcomes, tasks))
        yerr = interval_errors(table)
    values = cells.loc[cells["suite"] == suite, "value"]
    paths = list(write_cost_table(table, suite, tables_dir, values).values())
    accuracy = build_table(cells, suite, tasks, "value")
    refs = {r: float(v) for m, r, v in accuracy[["method", "row", AVG]].itertuples(index=False)
            if m in ("pretrained", "individual")}
    paths += write_cost_figure(table, suite, scale_for(suite, values), figures_dir, refs, yerr)
    return paths, len(table)
