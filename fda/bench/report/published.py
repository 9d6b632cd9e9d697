"""Published numbers: the FDA paper's tables (``data/paper_tables.csv``) and other papers' averages
of data-free merges (``data/peer_numbers.csv``), read and shaped for the tables.

``paper_tables.csv``: one row per printed cell, columns suite, source, row (the paper's label),
method, init, anchor_init (the keys of our tables), task (``avg`` = the printed Avg), value (as
printed) and flag (empty, or why the cell is suspect). Suites are ours (``vitb32`` ...) or an
ablation (``vitb32_ablation_init``, ``robertab_ablation_tokennum``, ``*_ablation_dist``).

``peer_numbers.csv``: method, backbone, tasks, checkpoint_family, metric, value, source; the
backbone maps to a suite through :data:`BACKBONE_SUITES`.

This module reads, checks and shapes the data (the paper's own tables as string grids for
``fda-bench paper-tables``); :mod:`fda.bench.report.tables` puts it beside ours.
"""

from __future__ import annotations

import math
import os
import re
from importlib import resources
from io import StringIO
from typing import NamedTuple

import pandas as pd

PAPER_DATA = "data/paper_tables.csv"
PEER_DATA = "data/peer_numbers.csv"
#: the printed Avg's task name in paper_tables.csv
AVG_TASK = "avg"
#: peer_numbers.csv backbones -> suite names
BACKBONE_SUITES = {"ViT-B/32": "vitb32", "ViT-B/16": "vitb16", "ViT-L/14": "vitl14",
                   "RoBERTa-base": "robertab", "RoBERTa-large": "robertal", "Llama-2-13B": "llama13b"}
#: factor from the paper's printed unit to our table's unit (Table 3 prints fractions, our LLM tables percent)
PAPER_FACTOR = {"llama13b": 100.0}
#: marker of a flagged printed cell in Markdown/LaTeX
FLAG_MARK = "†"
_DIST = re.compile(r"^construct=(\w+), adapt=(\w+)$")


def _read(name: str, path: str | os.PathLike | None) -> pd.DataFrame:
    src = StringIO(resources.files("fda.bench.report").joinpath(name).read_text()) if path is None else path
    return pd.read_csv(src, keep_default_na=False, na_values={"value": [""]})


def paper_data(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every printed cell of the paper (the packaged CSV, or ``path``); ``flag`` is '' when absent."""
    df = _read(PAPER_DATA, path)
    if "flag" not in df.columns:
        df["flag"] = ""
    return df


def peer_data(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Other papers' published averages, with a ``suite`` column (NaN for unmapped backbones)."""
    df = _read(PEER_DATA, path)
    return df.assign(suite=df["backbone"].map(BACKBONE_SUITES))


def peer_rows(suite: str, path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Published-elsewhere rows of ``suite``: row (the method as published), family (the experts'
    checkpoint family), source, Avg; grouped by family in file order."""
    df = peer_data(path)
    df = df[df["suite"] == suite]
    families = list(dict.fromkeys(df["checkpoint_family"]))
    df = df.assign(_f=df["checkpoint_family"].map(families.index)).sort_values("_f", kind="stable")
    return pd.DataFrame({"row": df["method"].to_numpy(), "family": df["checkpoint_family"].to_numpy(),
                         "source": df["source"].to_numpy(), "Avg": df["value"].to_numpy(dtype=float)})


def short_source(source: str) -> str:
    """A source note without its parenthesised and ';' details ('Iso paper arXiv:... Table 1')."""
    return re.split(r" \(|;", source)[0].strip()


def main_source(rows: pd.DataFrame) -> str:
    """The source note most of ``rows`` share (cell-level cautions live in ``flag``)."""
    return str(rows["source"].value_counts(sort=True).index[0]) if len(rows) else ""


# -------------------------------------------------------------------------------- checks


def printed_decimals(v: float, most: int = 6) -> int:
    """Decimals needed to write ``v`` exactly (63.8 -> 1, 0.5918 -> 4)."""
    for d in range(most + 1):
        if abs(round(v, d) - v) < 1e-9:
            return d
    return most


def check_averages(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose printed Avg differs from the mean of their printed task values by more than
    rounding allows (half a unit of the row's last printed decimal on the mean, and as much on
    the Avg: a tolerance of one unit). Columns suite, row, printed, mean, diff, tolerance."""
    out = []
    for (suite, row), g in df.groupby(["suite", "row"], sort=False):
        tasks = g.loc[g["task"] != AVG_TASK, "value"].astype(float)
        avg = g.loc[g["task"] == AVG_TASK, "value"].astype(float)
        if tasks.empty or avg.empty:
            continue
        d = max(printed_decimals(v) for v in list(tasks) + list(avg))
        mean, printed = float(tasks.mean()), float(avg.iloc[0])
        tol = 10.0 ** -d + 1e-9
        if abs(printed - mean) > tol:
            out.append({"suite": suite, "row": row, "printed": printed, "mean": mean,
                        "diff": printed - mean, "tolerance": 10.0 ** -d})
    return pd.DataFrame(out, columns=["suite", "row", "printed", "mean", "diff", "tolerance"])


def cell_flags(rows: pd.DataFrame) -> dict[tuple[str, str, str, str], str]:
    """``{(method, init, anchor_init, task): flag}`` for the flagged cells of ``rows`` (task 'avg')."""
    f = rows[rows["flag"].astype(str) != ""]
    return {(m, i, a, t): str(x) for m, i, a, t, x in f[["method", "init", "anchor_init", "task", "flag"]].itertuples(index=False)}


# -------------------------------------------------------------------------------- the paper's own tables


class Grid(NamedTuple):
    """One of the paper's tables as strings: title, header, body, footnotes."""

    title: str
    header: list[str]
    body: list[list[str]]
    notes: list[str]


def _fmt(v: float, decimals: int) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.{decimals}f}"


def _grid(suite: str, source: str, g: pd.DataFrame) -> Grid:
    decimals = max(printed_decimals(v) for v in g["value"].astype(float))
    labels = list(dict.fromkeys(g["row"]))
    notes = [f"{FLAG_MARK} {r} {'Avg' if t == AVG_TASK else t}: {f}"
             for r, t, f in g.loc[g["flag"] != "", ["row", "task", "flag"]].itertuples(index=False)]

    def cell(label: str, task: str) -> str:
        hit = g[(g["row"] == label) & (g["task"] == task)]
        if hit.empty:
            return "–"
        return _fmt(float(hit["value"].iloc[0]), decimals) + (FLAG_MARK if hit["flag"].iloc[0] else "")

    dist = [_DIST.match(r) for r in labels]
    if all(dist) and set(g["task"]) == {AVG_TASK}:  # distance ablations: construction x adaptation
        cons = list(dict.fromkeys(m.group(1) for m in dist))
        adapt = list(dict.fromkeys(m.group(2) for m in dist))
        body = [[f"construct {c}"] + [cell(f"construct={c}, adapt={a}", AVG_TASK) for a in adapt] for c in cons]
        return Grid(f"{suite}: {source}", ["Avg"] + [f"adapt {a}" for a in adapt], body, notes)
    tasks = [t for t in dict.fromkeys(g["task"]) if t != AVG_TASK]
    cols = tasks + ([AVG_TASK] if (g["task"] == AVG_TASK).any() else [])
    body = [[r] + [cell(r, t) for t in cols] for r in labels]
    return Grid(f"{suite}: {source}", ["Method"] + [("Avg" if t == AVG_TASK else t) for t in cols], body, notes)


def paper_grids(suites: list[str] | None = None, path: str | os.PathLike | None = None) -> list[Grid]:
    """The paper's tables, as printed, one per (suite, source) group (a source's cell-level caution
    becomes a flag, not a table of its own). ``suites`` None: the ablations."""
    df = paper_data(path)
    df = df.assign(flag=df["flag"].astype(str))
    if suites is None:
        suites = [s for s in dict.fromkeys(df["suite"]) if "_ablation_" in s]
    grids = []
    for suite in suites:
        rows = df[df["suite"] == suite]
        sources = list(dict.fromkeys(rows["source"]))
        group = [next((t for t in sources if s.startswith(t + ";")), s) for s in rows["source"]]
        group = pd.Series(group, index=rows.index)
        grids += [_grid(suite, source, rows[group == source]) for source in dict.fromkeys(group)]
    return grids
