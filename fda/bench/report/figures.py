"""Figures from result cells and FDA construction logs (matplotlib, Agg backend; PNG and PDF).

- ``methods``: per suite, average absolute and normalised score of every table row;
- ``heatmap``: per suite, normalised score per row and task;
- ``construction``: per suite and anchor init, construction loss and mean gradient cosine over
  steps, one line per block (mean over experts);
- ``spectra``: per suite and anchor init, the anchors' normalised singular values at the
  recorded construction steps (the paper's Figure 3 analogue).

Construction logs are the JSON files ``fda-bench fda-construct`` writes next to the anchors
(:func:`read_construct_log` documents the format).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fda.io.atomic import atomic_path  # noqa: E402
from fda.bench.eval.outcomes import Outcome, OutcomeKey  # noqa: E402
from fda.bench.report.intervals import RowIntervals, row_intervals  # noqa: E402
from fda.bench.report.tables import AVG, FIXED, ROW_KEY, build_table, init_row, scale_for  # noqa: E402

FORMATS = ("png", "pdf")
# Fixed metadata so that the same data gives the same bytes (matplotlib stamps dates otherwise).
_META = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None}}


def save(fig: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` atomically, then close it."""
    out = []
    for ext in FORMATS:
        path = Path(f"{stem}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=_META[ext])
        out.append(path)
    plt.close(fig)
    return out


# -------------------------------------------------------------------------------- cells


def _normalized_table(cells: pd.DataFrame, suite: str, tasks: Sequence[str], absolute: pd.DataFrame) -> pd.DataFrame:
    """The normalised table with exactly the rows of the ``absolute`` one, in its order: a row
    without any normalised value (every expert scored 0, as in tiny smoke runs) stays, as NaN."""
    table = build_table(cells, suite, tasks, "normalized").set_index(ROW_KEY)
    table = table.reindex(pd.MultiIndex.from_frame(absolute[ROW_KEY])).reset_index()
    return table.assign(row=absolute["row"].to_numpy())


def _bar_errors(table: pd.DataFrame, ints: RowIntervals | None, normalized: bool) -> np.ndarray | None:
    """[2, rows] distances from each row's Avg to its 95% interval ends (0 where it has none)."""
    if ints is None:
        return None
    err = np.zeros((2, len(table)))
    for j, key in enumerate(table[ROW_KEY].itertuples(index=False)):
        iv = ints.normalized(tuple(key), AVG) if normalized else ints.of(tuple(key), AVG)
        v = float(table[AVG].iloc[j])
        if iv is not None and np.isfinite(v):
            err[:, j] = [max(v - iv.lo, 0.0), max(iv.hi - v, 0.0)]
    return err


def method_comparison(cells: pd.DataFrame, suite: str, tasks: Sequence[str],
                      ints: RowIntervals | None = None) -> plt.Figure:
    """Bar chart: Avg (absolute) and Avg (normalised) per row of the suite's table; with ``ints``
    (:func:`fda.bench.report.intervals.row_intervals`) each bar has its 95% interval."""
    absolute = build_table(cells, suite, tasks, "value")
    normalized = _normalized_table(cells, suite, tasks, absolute)
    scale = scale_for(suite, cells.loc[cells["suite"] == suite, "value"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(absolute) + 1.8), sharey=True)
    y = np.arange(len(absolute))
    # grey: references; blue: baselines; red: FDA (light: the validated protocol)
    palette = {"baseline": ("#1f77b4", "#9ecae1"), "fda": ("#d62728", "#fc9272")}
    colors = ["#888888" if m in ("pretrained", "individual") else palette["fda" if m == "fda" else "baseline"][p != FIXED]
              for m, p in absolute[["method", "protocol"]].itertuples(index=False)]
    for ax, table, factor, title in ((axes[0], absolute, scale, "Avg (absolute)"),
                                     (axes[1], normalized, 100.0, "Avg (normalised, % of individual)")):
        vals = table[AVG].to_numpy(dtype=float) * factor
        err = _bar_errors(table, ints, normalized=table is normalized)
        ax.barh(y, np.nan_to_num(vals), color=colors, xerr=None if err is None else err * factor,
                error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "k"})
        for yi, v in zip(y, vals):
            if np.isfinite(v):
                ax.text(v, yi, f" {v:.2f}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, absolute["row"])
    axes[0].invert_yaxis()
    fig.suptitle(f"{suite}: merging methods", fontsize=11)
    return fig


def task_heatmap(cells: pd.DataFrame, suite: str, tasks: Sequence[str],
                 ints: RowIntervals | None = None) -> plt.Figure:
    """Normalised score (% of the individual expert) per table row and task; with ``ints``, an
    FDA cell is marked + or − where its paired 95% interval against its init excludes 0."""
    table = _normalized_table(cells, suite, tasks, build_table(cells, suite, tasks, "value"))
    cols = list(tasks) + [AVG]
    data = table[cols].to_numpy(dtype=float) * 100.0
    marks = np.full(data.shape, "", dtype=object)
    if ints is not None:
        for i, (m, init, a, p) in enumerate(table[ROW_KEY].itertuples(index=False)):
            for j, c in enumerate(cols):
                d = ints.paired_difference((m, init, a, p), init_row(init), c) if m == "fda" else None
                if d is not None and d.excludes_zero():
                    marks[i, j] = "+" if d.lo > 0 else "−"
    fig, ax = plt.subplots(figsize=(0.9 * len(cols) + 3, 0.4 * len(table) + 1.5))
    im = ax.imshow(data, cmap="viridis", aspect="auto", vmin=np.nanmin(data) if np.isfinite(data).any() else 0, vmax=max(100.0, np.nanmax(data) if np.isfinite(data).any() else 100))
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.0f}{marks[i, j]}", ha="center", va="center", fontsize=7, color="w" if v < 70 else "k")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(table)), table["row"])
    fig.colorbar(im, ax=ax, label="% of individual expert")
    note = "; FDA +/−: paired 95% interval vs its init excludes 0" if ints is not None else ""
    ax.set_title(f"{suite}: normalised score per task{note}", fontsize=11 if not note else 9)
    return fig


# -------------------------------------------------------------------------------- construction logs


def read_construct_log(path: str | os.PathLike) -> dict[str, Any]:
    """A construction log: ``{"suite", "block", "task", "anchor_init", "best_step", "best_loss",
    "steps": [...], "loss": [...], "cos_mean": [...], "cos": {tensor: [...]},
    "sv_steps": [...], "singular_values": [[...], ...]}`` (lists may be empty)."""
    return json.loads(Path(path).read_text())


def _best_so_far(log: dict[str, Any]) -> dict[str, Any]:
    """An L-BFGS log as the anchors a run of each length returns: loss and cosine at the lowest
    loss so far (its raw rows include line-search trial points, which are not steps)."""
    loss, cos = np.asarray(log.get("loss", []), dtype=float), np.asarray(log.get("cos_mean", []), dtype=float)
    if not len(loss):
        return log
    best = np.minimum.accumulate(loss)
    at = np.array([int(np.argmin(loss[: k + 1])) for k in range(len(loss))])  # index of the lowest loss so far
    return {**log, "loss": best.tolist(), "cos_mean": cos[at].tolist() if len(cos) == len(loss) else log.get("cos_mean", [])}


def construction_curves(logs: Iterable[dict[str, Any]], title: str) -> plt.Figure:
    """Loss and mean gradient cosine over objective evaluations (AdamW: steps); one line per block
    (mean over experts). L-BFGS logs are drawn best-so-far (see :func:`_best_so_far`)."""
    by_block: dict[int, list[dict[str, Any]]] = defaultdict(list)
    optimizers = set()
    for log in logs:
        optimizers.add(log.get("optimizer", "adamw"))
        by_block[int(log["block"])].append(_best_so_far(log) if log.get("optimizer") == "lbfgs" else log)
    fig, (ax_l, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis", max(len(by_block), 2))
    for k, block in enumerate(sorted(by_block)):
        for ax, key in ((ax_l, "loss"), (ax_c, "cos_mean")):
            series = [np.asarray(lg[key], dtype=float) for lg in by_block[block] if len(lg.get(key, []))]
            if not series:
                continue
            n = min(len(s) for s in series)
            steps = np.asarray(by_block[block][0]["steps"][:n], dtype=float)
            ax.plot(steps, np.mean([s[:n] for s in series], axis=0), color=cmap(k), label=f"block {block}")
    xlabel = "construction step" if optimizers <= {"adamw"} else "objective evaluation (L-BFGS: best so far)"
    ax_l.set(xlabel=xlabel, ylabel="loss  Σ_p (1 − cos)", title="construction loss")
    ax_c.set(xlabel=xlabel, ylabel="mean cos(∇, τ)", title="gradient–task-vector cosine")
    for ax in (ax_l, ax_c):
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=11)
    return fig


def singular_spectra(logs: Iterable[dict[str, Any]], title: str, block: int | None = None) -> plt.Figure:
    """Normalised singular values (σ_k / σ_1) of the anchors at each recorded construction step,
    for one block (default: the middle one), mean over experts; colour = step."""
    logs = [lg for lg in logs if lg.get("singular_values")]
    fig, ax = plt.subplots(figsize=(6, 4))
    if not logs:
        ax.text(0.5, 0.5, "no singular-value snapshots recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        fig.suptitle(title, fontsize=11)
        return fig
    blocks = sorted({int(lg["block"]) for lg in logs})
    chosen = block if block is not None else blocks[len(blocks) // 2]
    sel = [lg for lg in logs if int(lg["block"]) == chosen]
    steps = sel[0]["sv_steps"]
    cmap = plt.get_cmap("plasma", max(len(steps), 2))
    for k, step in enumerate(steps):
        spectra = []
        for lg in sel:
            if k < len(lg["singular_values"]):
                s = np.asarray(lg["singular_values"][k], dtype=float)
                spectra.append(s / s[0] if s.size and s[0] > 0 else s)
        if spectra:
            n = min(len(s) for s in spectra)
            ax.plot(np.arange(1, n + 1), np.mean([s[:n] for s in spectra], axis=0), color=cmap(k), label=f"step {step}")
    ax.set(xlabel="index k", ylabel="σ_k / σ_1", title=f"block {chosen}, mean over {len(sel)} experts", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def cell_figure_paths(out_dir: str | os.PathLike, suite: str) -> list[Path]:
    d = Path(out_dir)
    return [d / f"{suite}-{kind}.{ext}" for kind in ("methods", "heatmap") for ext in FORMATS]


def construction_figure_paths(out_dir: str | os.PathLike, suite: str, anchor_init: str) -> list[Path]:
    d = Path(out_dir)
    return [d / f"{suite}-{kind}-{anchor_init}.{ext}" for kind in ("construction", "spectra") for ext in FORMATS]


def write_cell_figures(cells: pd.DataFrame, suite: str, tasks: Sequence[str], out_dir: str | os.PathLike,
                       outcomes: Mapping[OutcomeKey, Outcome] | None = None) -> list[Path]:
    """Method comparison and per-task heatmap of one suite (with intervals when ``outcomes`` are given)."""
    d = Path(out_dir)
    ints = row_intervals(outcomes, tasks) if outcomes else None
    return save(method_comparison(cells, suite, tasks, ints), d / f"{suite}-methods") + \
        save(task_heatmap(cells, suite, tasks, ints), d / f"{suite}-heatmap")


def write_construction_figures(suite: str, anchor_init: str, logs: Sequence[str | os.PathLike],
                               out_dir: str | os.PathLike) -> list[Path]:
    """Construction curves and singular value spectra for one suite and anchor init."""
    d = Path(out_dir)
    records = [read_construct_log(p) for p in logs]
    out = save(construction_curves(records, f"{suite}: FDA construction ({anchor_init} anchors)"),
               d / f"{suite}-construction-{anchor_init}")
    out += save(singular_spectra(records, f"{suite}: anchor singular values ({anchor_init} anchors)"),
                d / f"{suite}-spectra-{anchor_init}")
    return out
