"""Joining runs: the result cells, per-example outcomes and per-job costs of several runs of one
configuration that cover different seeds (for example expert seed 0 run on one day, expert
seeds 1 and 2 on another, or seeds split across machines) -> one set, as if one run had made
them. Nothing is re-evaluated; what cannot be the same experiment is refused:

- a row key (suite, method, init, anchor init, expert seed, FDA seed, task, metric) in two runs;
- two runs of one cell that disagree on the suite, the expert source, the q/k/v layout, the
  anchor source or the tasks a method was scored on;
- per-example outcomes whose references differ for one task (another test split or data seed:
  pairing by example would compare different examples).

Rows keep their own ``config_hash`` and ``fda_bench_version``, so a joined cell shows which run
each row came from."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fda.bench.eval.outcomes import TASK, Outcome, OutcomeError, OutcomeKey, read_outcomes
from fda.bench.report.results import SORT_KEYS, CellError, read_cells

#: cell columns that must agree between the runs of one cell (per method)
SAME_PER_CELL = ("suite", "expert_source", "qkv_layout", "anchor_source")
#: what identifies one job in a per-job cost file (results/costs/{suite}.csv)
JOB_KEYS = ["suite", "stage", "method", "init", "anchor_init", "expert_seed", "seed", "block", "task"]


class JoinError(CellError):
    """Runs that cannot be joined (a project error: ``fda-bench`` prints it as one line)."""


def join_cells(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The rows of one cell from several runs (``paths``: that cell's CSV in each run), checked and
    sorted as a cell."""
    if len(paths) < 2:
        raise JoinError(f"joining needs the cell from at least two runs, got {[str(p) for p in paths]}")
    frames = [read_cells([p]).assign(_source=str(p)) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    for col in SAME_PER_CELL:
        seen = df.groupby("method")[col].unique()
        mixed = {m: sorted(map(str, v)) for m, v in seen.items() if len(v) > 1}
        if mixed:
            raise JoinError(f"{[str(p) for p in paths]}: the runs disagree on {col} ({mixed}); "
                            "only runs of one configuration join")
    tasks = df.groupby(["_source", "method", "init", "anchor_init"])["task"].agg(frozenset)
    for (method, init, anchor), per_run in tasks.groupby(level=[1, 2, 3]):
        if len(set(per_run)) > 1:
            detail = {src: sorted(t) for (src, *_), t in per_run.items()}
            raise JoinError(f"{method} {init} {anchor}: the runs scored different tasks {detail}")
    dup = df.duplicated(SORT_KEYS, keep=False)
    if dup.any():
        first = df.loc[dup].sort_values(SORT_KEYS).head(2)
        raise JoinError(f"row {first[SORT_KEYS].iloc[0].to_dict()} is in more than one run "
                        f"({sorted(set(first['_source']))}): the runs overlap in seeds; join runs of disjoint seeds")
    return df.drop(columns="_source").sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)


def join_outcomes(paths: Iterable[str | os.PathLike]) -> dict[OutcomeKey, Outcome]:
    """The outcomes of several runs' files of one cell, refusing a key stored twice and a task
    whose references differ between keys (another test split: nothing would pair)."""
    out: dict[OutcomeKey, Outcome] = {}
    references: dict[str, tuple[np.ndarray, str]] = {}
    for p in paths:
        for key, o in read_outcomes(p).items():
            if key in out:
                raise JoinError(f"{p}: outcomes for {key} are in another run too; join runs of disjoint seeds")
            task = key[TASK]
            if task in references:
                ref, where = references[task]
                if ref.shape != o.references.shape or not np.array_equal(ref, o.references):
                    raise JoinError(f"{p}: task {task!r} has other test references than in {where} "
                                    f"({o.references.shape} vs {ref.shape} examples): another split or data seed")
            else:
                references[task] = (o.references, str(p))
            out[key] = o
    return out


def join_jobs(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Per-job cost rows (``results/costs/{suite}.csv``) of several runs in one frame; files from
    before expert seeds read as expert seed 0; a job in two files is refused."""
    frames = []
    for p in paths:
        try:
            df = pd.read_csv(p, keep_default_na=False, na_values={c: [""] for c in ("seed", "block", "wall_s", "cpu_s",
                             "max_rss_mb", "gpu_peak_mb", "flops")}, dtype={"init": str, "anchor_init": str, "task": str})
        except (OSError, ValueError) as e:
            raise JoinError(f"{p}: not a readable per-job cost file ({e})") from e
        if "expert_seed" not in df.columns:
            df.insert(df.columns.get_loc("seed"), "expert_seed", 0)
        missing = set(JOB_KEYS) - set(df.columns)
        if missing:
            raise JoinError(f"{p}: not a per-job cost file (missing columns {sorted(missing)})")
        frames.append(df.assign(_source=str(p)))
    if not frames:
        raise JoinError("no per-job cost files to join")
    df = pd.concat(frames, ignore_index=True)
    df["expert_seed"] = df["expert_seed"].astype(int)
    for col in ("seed", "block"):
        df[col] = df[col].astype("Int64")
    dup = df.duplicated(JOB_KEYS, keep=False)
    if dup.any():
        row = df.loc[dup].iloc[0]
        raise JoinError(f"job {row[JOB_KEYS].to_dict()} is in more than one run ({sorted(set(df.loc[dup, '_source']))})")
    return df.drop(columns="_source").reset_index(drop=True)


def cell_outcome_keys(cell: pd.DataFrame) -> set[OutcomeKey]:
    """The (method, init, anchor init, expert seed, seed, task, protocol) keys of a cell's rows (a
    frame without ``protocol``: fixed rows)."""
    protocol = cell["protocol"] if "protocol" in cell.columns else pd.Series("fixed", index=cell.index)
    columns = ["method", "init", "anchor_init", "expert_seed", "seed", "task"]
    return {(m, i, a, int(e), int(s), t, p or "fixed")
            for (m, i, a, e, s, t), p in zip(cell[columns].itertuples(index=False), protocol)}


def check_outcome_keys(cell: pd.DataFrame, outcomes: Mapping[OutcomeKey, Outcome], where: str) -> None:
    """:class:`OutcomeError` unless every key of ``cell`` has outcomes in ``outcomes`` (from ``where``)."""
    missing = sorted(cell_outcome_keys(cell) - set(outcomes))
    if missing:
        raise OutcomeError(f"{where}: no per-example outcomes for {missing[:3]}")
