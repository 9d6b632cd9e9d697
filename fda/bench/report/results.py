"""Result cells: tidy CSV rows, one per (suite, method, init, anchor_init, expert_seed, seed, task,
metric). ``expert_seed`` is the experts' fine-tuning seed (0 for hub or local experts), ``seed`` the
FDA seed (the data seed on other rows).

``protocol`` says how a row's hyperparameters were set (docs/selection.md): ``fixed`` (the config's
values; cells and raw files from before the column read so) or ``validated`` (chosen on the
validation split from a declared grid); ``hparams`` holds a validated row's chosen values (JSON,
empty on fixed rows). Raw evaluation files also say which ``split`` they scored: only test rows
enter a cell.

A cell is written from raw evaluation rows plus the individual experts' rows (for ``normalized``)
and provenance: the experts' source, where FDA rows' anchors come from (``anchor_source``:
``constructed`` here or the authors' ``official`` release; empty for other rows), the q/k/v layout,
the config hash and the package version. Rows are sorted and floats formatted with a fixed rule,
without timestamps, so the same inputs always give byte-identical files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fda.io.atomic import atomic_path

#: columns of a raw evaluation file (what ``fda-bench evaluate`` writes)
RAW_COLUMNS = ["method", "init", "anchor_init", "protocol", "hparams", "split", "expert_seed", "seed", "task", "metric",
               "headline", "value"]

#: columns of a result cell, in order
CELL_COLUMNS = [
    "suite", "method", "init", "anchor_init", "protocol", "hparams", "expert_seed", "seed", "task", "metric", "headline",
    "value", "normalized", "expert_source", "anchor_source", "qkv_layout", "config_hash", "fda_bench_version",
]
SORT_KEYS = ["suite", "method", "init", "anchor_init", "protocol", "expert_seed", "seed", "task", "metric"]
#: what a file without the column holds: every row before protocols was fixed, every raw file scored test
COLUMN_DEFAULTS = {"protocol": "fixed", "hparams": "", "split": "test"}
#: the only split whose rows enter a cell
CELL_SPLIT = "test"
FLOAT_FORMAT = "%.10g"


class CellError(ValueError):
    """A raw evaluation file or result cell is malformed or inconsistent."""


def raw_frame(rows: Sequence[Mapping[str, Any]], *, method: str, init: str = "", anchor_init: str = "",
              seed: int = 0, expert_seed: int = 0, protocol: str = "fixed", hparams: str = "",
              split: str = "test") -> pd.DataFrame:
    """Raw rows (``{"task", "metric", "value"}`` from ``Suite.evaluate``) tagged with what was
    evaluated, under which protocol (``hparams``: a validated row's chosen values, JSON) and on
    which split. Per task, the first metric the suite returned is the headline metric."""
    records = []
    seen: set[str] = set()
    for r in rows:
        missing = {"task", "metric", "value"} - set(r)
        if missing:
            raise CellError(f"evaluation row {dict(r)} lacks {sorted(missing)}")
        headline = r["task"] not in seen
        seen.add(r["task"])
        records.append({"method": method, "init": init, "anchor_init": anchor_init, "protocol": protocol,
                        "hparams": hparams, "split": split, "expert_seed": int(expert_seed), "seed": int(seed),
                        "task": str(r["task"]), "metric": str(r["metric"]), "headline": headline,
                        "value": float(r["value"])})
    return pd.DataFrame.from_records(records, columns=RAW_COLUMNS)


def read_raw(path: str | os.PathLike) -> pd.DataFrame:
    """A raw evaluation file (:data:`RAW_COLUMNS`); one written before expert seeds has expert seed 0,
    one written before protocols is a fixed row's evaluation of the test split."""
    df = pd.read_csv(path, keep_default_na=False, dtype={"init": str, "anchor_init": str, "protocol": str,
                                                         "hparams": str, "split": str})
    if "expert_seed" not in df.columns:
        df["expert_seed"] = 0
    for col, default in COLUMN_DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
    missing = set(RAW_COLUMNS) - set(df.columns)
    if missing:
        raise CellError(f"{path}: not a raw evaluation file (missing columns {sorted(missing)})")
    df["headline"] = df["headline"].map(_as_bool)
    return df[RAW_COLUMNS]


def _as_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() == "true"


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Atomic, deterministic CSV: fixed float format, '\\n' line ends, no index."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return Path(path)


def normalize(df: pd.DataFrame, individual: pd.DataFrame) -> pd.Series:
    """``value / individual value`` on the same (expert seed, task, metric): each row is divided by
    the individual expert of its own expert seed (frames without ``expert_seed``: expert seed 0);
    NaN where that expert's value is missing or zero (a ratio to zero means nothing)."""
    on = ["expert_seed", "task", "metric"]
    individual, df_keys = _with_expert_seed(individual), _with_expert_seed(df)
    ref = individual.drop_duplicates(on).set_index(on)["value"]
    keys = pd.MultiIndex.from_frame(df_keys[on])
    denom = ref.reindex(keys).to_numpy(dtype=float)
    vals = df["value"].to_numpy(dtype=float)
    out = [v / d if (not math.isnan(d) and d != 0.0) else math.nan for v, d in zip(vals, denom)]
    return pd.Series(out, index=df.index, dtype=float)


def _with_expert_seed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with an integer ``expert_seed`` column (0 where it has none)."""
    if "expert_seed" not in df.columns:
        return df.assign(expert_seed=0)
    return df.assign(expert_seed=df["expert_seed"].astype(int))


def build_cell(raw: Iterable[pd.DataFrame], individual: pd.DataFrame, *, suite: str, expert_source: str,
               config_hash: str, version: str | None = None, qkv_layout: str = "split",
               anchor_source: str = "constructed") -> pd.DataFrame:
    """Concatenate raw frames, add ``normalized`` and provenance (``qkv_layout``: the q/k/v layout
    the merges ran in; ``anchor_source``: where the FDA rows' anchors come from, recorded on FDA
    rows only), sort. Duplicated keys are an error."""
    if version is None:
        from fda import __version__ as version
    frames = [f for f in raw if len(f)]
    if not frames:
        raise CellError("no evaluation rows to build a cell from")
    df = pd.concat(frames, ignore_index=True)
    for col, default in COLUMN_DEFAULTS.items():
        df[col] = df[col].fillna(default).astype(str) if col in df.columns else default
    held_out = sorted(set(df["split"]) - {CELL_SPLIT})
    if held_out:
        raise CellError(f"evaluation rows of the {', '.join(held_out)} split cannot enter a result cell: cells hold "
                        f"{CELL_SPLIT} numbers only (validation scores are for selection, docs/selection.md)")
    df = df.drop(columns="split")
    df.insert(0, "suite", suite)
    for col in ("init", "anchor_init"):
        df[col] = df[col].fillna("").astype(str)
    df["seed"] = df["seed"].astype(int)
    df["expert_seed"] = _with_expert_seed(df)["expert_seed"]
    dup = df.duplicated(SORT_KEYS, keep=False)
    if dup.any():
        raise CellError(f"duplicate rows for {df.loc[dup, SORT_KEYS].head(3).to_dict('records')}")
    df["normalized"] = normalize(df, individual)
    df["expert_source"] = expert_source
    df["anchor_source"] = df["method"].map(lambda m: anchor_source if m == "fda" else "")
    df["qkv_layout"] = qkv_layout
    df["config_hash"] = config_hash
    df["fda_bench_version"] = version
    return df.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)[CELL_COLUMNS]


def write_cell(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a cell built by :func:`build_cell` (atomic, byte-stable)."""
    missing = set(CELL_COLUMNS) - set(df.columns)
    if missing:
        raise CellError(f"cannot write cell {path}: missing columns {sorted(missing)}")
    return write_csv(df.sort_values(SORT_KEYS, kind="mergesort")[CELL_COLUMNS], path)


def read_cells(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All rows of the given cells in one frame (empty strings stay empty, not NaN). Cells written
    before a column existed read with its old meaning: ``anchor_source`` constructed (FDA rows),
    ``expert_seed`` 0, ``protocol`` fixed (``hparams`` empty)."""
    frames = []
    for p in paths:
        df = pd.read_csv(p, keep_default_na=False, na_values={"value": [""], "normalized": ["", "nan", "NaN"]},
                         dtype={"init": str, "anchor_init": str, "qkv_layout": str, "config_hash": str,
                                "fda_bench_version": str, "anchor_source": str, "protocol": str, "hparams": str})
        for col in ("protocol", "hparams"):  # a cell from before protocols: fixed rows
            if col not in df.columns:
                df[col] = COLUMN_DEFAULTS[col]
        if "anchor_source" not in df.columns:  # a cell from before the column: its anchors were built here
            df["anchor_source"] = df["method"].map(lambda m: "constructed" if m == "fda" else "")
        if "expert_seed" not in df.columns:  # a cell from before expert seeds: one expert seed, 0
            df["expert_seed"] = 0
        missing = set(CELL_COLUMNS) - set(df.columns)
        if missing:
            raise CellError(f"{p}: not a result cell (missing columns {sorted(missing)})")
        df["headline"] = df["headline"].map(_as_bool)
        frames.append(df[CELL_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=CELL_COLUMNS)
    return pd.concat(frames, ignore_index=True)
