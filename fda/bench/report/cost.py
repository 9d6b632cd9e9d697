"""What each method row cost: wall time, CPU time, peak memory and estimated FLOPs, per suite.

Inputs are the Snakemake benchmark files of the jobs (``logs/benchmarks/{suite}/...tsv``), the
resources line each job prints in its log (:mod:`fda.bench.usage`: exact CPU time and peak RSS,
peak GPU memory), the FDA construction logs (objective evaluations and block shapes, for the
FLOPs) and, for WUDI's FLOPs, the header of its merged model. docs/cost.md is the reference.

A row's cost sums the jobs that belong to its method, for one run: one expert seed (and, for FDA,
one FDA seed); the cost table shows the mean over the row's runs:

* a baseline: its merge job;
* ``FDA (init, anchor init)``: the construction of its anchors (every block and expert of that
  expert seed, FDA seed and anchor init), its adaptation (and assembly), and the init's merge of
  the same expert seed (none from
  ``pretrained``). The anchors are shared by every init and the init's merge by its baseline row
  and both anchor inits, but each FDA row counts them in full: it is what running that one row
  costs;
* not counted: data preparation, the experts (fine-tuning or download), evaluation (its wall
  time is the separate ``eval_s`` column), cells, tables and figures.

Times are summed over the row's jobs; peak memory is the largest job's (they need not run at
once). Jobs that answered from their block cache (a resumed coarse job) cost only what they did.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fda.bench.report.cost_jobs import (
    CostPlan,
    JobRef,
    anchor_log_expert_seed,
    anchor_log_files,
    benchmark_files,
    log_of,
    parse_benchmark_path,
)
from fda.bench.report.flops import (
    BlockShape,
    adaptation_flops,
    construction_flops,
    wudi_flops,
)
from fda.bench.report.results import CellError
from fda.bench.report.tables import (
    AVG,
    KEY,
    build_table,
    fixed_only,
    row_label,
    scale_for,
    to_latex,
    to_markdown,
)
from fda.bench.usage import read_usage
from fda.io.atomic import atomic_path

#: per-job columns of ``results/costs/{suite}.csv``
JOB_COLUMNS = ["suite", "stage", "method", "init", "anchor_init", "expert_seed", "seed", "block", "task", "wall_s", "cpu_s",
               "max_rss_mb", "gpu_peak_mb", "measured_by", "flops", "benchmark"]
#: per-row, per-run (expert seed, FDA seed) cost columns (sums over the run's jobs; peaks are maxima)
ROW_COLUMNS = ["method", "init", "anchor_init", "expert_seed", "seed", "row", "merge_s", "construct_s", "adapt_s", "wall_s", "cpu_s",
               "max_rss_mb", "gpu_peak_mb", "flops", "eval_s", "jobs"]
STAGES = ("merge", "construct", "adapt", "evaluate")


class CostError(CellError):
    """A benchmark file or construction log the cost table cannot read, or one it misses (a
    project error: ``fda-bench`` prints it as one line)."""


def read_benchmark(path: str | os.PathLike) -> dict[str, float]:
    """``wall_s``, ``cpu_s``, ``max_rss_mb`` of a Snakemake benchmark TSV (columns s, h:m:s,
    max_rss, ..., cpu_time; memory in MiB); NA -> NaN. Several rows (``repeat()``): mean time,
    largest memory."""
    try:
        df = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CostError(f"{path}: not a Snakemake benchmark file ({err})") from None
    if "s" not in df.columns or df.empty:
        raise CostError(f"{path}: not a Snakemake benchmark file (no 's' column or no row)")

    def col(name: str, how: str) -> float:
        if name not in df.columns:
            return math.nan
        v = pd.to_numeric(df[name], errors="coerce")
        return float(getattr(v, how)()) if v.notna().any() else math.nan

    return {"wall_s": col("s", "mean"), "cpu_s": col("cpu_time", "mean"), "max_rss_mb": col("max_rss", "max")}


# -------------------------------------------------------------------------------- FLOPs inputs


#: a construction log's key: (expert seed, FDA seed, anchor init, block, task)
LogKey = tuple[int, int, str, int, str]


def read_anchor_logs(paths: Iterable[str | os.PathLike]) -> dict[LogKey, dict[str, Any]]:
    """Construction logs by (expert seed, seed, anchor init, block, task), the expert seed from
    the log's path: ``evaluations`` (entries of the log's ``loss``) and ``shape`` (a
    :class:`BlockShape`, None when the log predates it)."""
    out = {}
    for p in paths:
        try:
            log = json.loads(Path(p).read_text())
            key = (anchor_log_expert_seed(p), int(log["seed"]), str(log["anchor_init"]), int(log["block"]), str(log["task"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CostError(f"{p}: not a construction log ({type(err).__name__}: {err})") from None
        shape = BlockShape.from_record(log["shape"]) if isinstance(log.get("shape"), Mapping) else None
        out[key] = {"evaluations": len(log.get("loss", [])), "shape": shape}
    return out


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the header(s) of a safetensors file or a directory of them (no tensor
    is read, no torch import)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    if not shapes:
        raise CostError(f"{p}: no safetensors tensors found")
    return shapes


def wudi_merge_flops(merged: str | os.PathLike, hparams: Mapping[str, Any], experts: int) -> float:
    """:func:`fda.bench.report.flops.wudi_flops` of the WUDI merge whose output is ``merged``: the
    2-D keys its coverage preset merges (``baselines.coverage``), ``experts`` task matrices each
    (an all-zero τ_i, dropped by WUDI, is counted), its ``steps`` and ``form``. Shapes are the
    stored (HF) ones: for a fused q/k/v merge layout this counts the same products."""
    import baselines
    from baselines.coverage import Role, role

    hp = baselines.method_spec("wudi").hparams(**dict(hparams))
    keys = [(k, s) for k, s in safetensors_shapes(merged).items() if len(s) == 2]
    merged_keys = [s for k, s in keys if role(hp.coverage, "wudi", k, s, hp.exclude_patterns) is Role.MERGE]
    return float(wudi_flops(merged_keys, experts, hp.steps, hp.form))


def _job_flops(ref: JobRef, logs: Mapping[LogKey, Mapping[str, Any]], adapt_epochs: Mapping[str, int]) -> float:
    """Estimated FLOPs of one construction or adaptation job (NaN when a log or shape is missing)."""
    logs = {k[1:]: v for k, v in logs.items() if k[0] == ref.expert_seed}  # the job's expert seed
    if ref.stage == "construct":
        mine = [v for (s, a, b, t), v in logs.items() if s == ref.seed and a == ref.anchor_init
                and (ref.block is None or b == ref.block) and (not ref.task or t == ref.task)]
        if not mine or any(v["shape"] is None for v in mine):
            return math.nan
        return float(sum(construction_flops(v["shape"], v["evaluations"]) for v in mine))
    if ref.stage == "adapt" and ref.init in adapt_epochs:
        blocks: dict[int, list[BlockShape | None]] = {}
        for (s, a, b, _t), v in logs.items():
            if s == ref.seed and a == ref.anchor_init and (ref.block is None or b == ref.block):
                blocks.setdefault(b, []).append(v["shape"])
        if not blocks or any(sh is None for shapes in blocks.values() for sh in shapes):
            return math.nan
        return float(sum(adaptation_flops(shapes[0], sum(sh.n_anchors for sh in shapes), adapt_epochs[ref.init])
                         for shapes in blocks.values()))
    return math.nan


# -------------------------------------------------------------------------------- jobs and rows


def planned_files(plan: CostPlan, benchmarks_dir: str | os.PathLike,
                  work_dir: str | os.PathLike | None) -> tuple[list[Path], list[Path]]:
    """The benchmark files and construction logs ``plan`` counts, under ``benchmarks_dir``
    (``logs/benchmarks/{suite}``) and ``work_dir`` (``work/{suite}``); a :class:`CostError` names
    the missing ones."""
    bench = [Path(benchmarks_dir) / p for p in benchmark_files(plan)]
    logs = [Path(work_dir) / p for p in anchor_log_files(plan)] if work_dir is not None else []
    missing = [str(p) for p in bench + logs if not p.is_file()]
    if missing:
        raise CostError(f"{len(missing)} file(s) the cost table needs are missing, e.g. {missing[:3]}: run their jobs "
                        f"first (snakemake builds them before the costs rule)")
    return bench, logs


def job_costs(benchmarks: Iterable[str | os.PathLike], anchor_logs: Iterable[str | os.PathLike] = (), *,
              adapt_epochs: Mapping[str, int] | None = None, merge_flops: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per counted job (:data:`JOB_COLUMNS`). CPU time and peak RSS come from the job's own
    resources line in its log (``measured_by`` = ``job``) when it has one, else from the benchmark
    file (``snakemake``: sampled, a lower bound for jobs past 30 s). ``flops``: construction and
    adaptation from ``anchor_logs`` and ``adapt_epochs`` (init -> epochs), merges from
    ``merge_flops`` (method -> FLOPs, e.g. :func:`wudi_merge_flops`); NaN where not estimated."""
    logs = read_anchor_logs(anchor_logs)
    epochs = dict(adapt_epochs or {})
    merges = dict(merge_flops or {})
    records = []
    for path in benchmarks:
        ref = parse_benchmark_path(path)
        if ref is None:
            continue
        bench = read_benchmark(path)
        usage = read_usage(log_of(path))
        by_job = usage is not None
        flops = merges.get(ref.method, math.nan) if ref.stage == "merge" else _job_flops(ref, logs, epochs)
        records.append({
            "suite": ref.suite, "stage": ref.stage, "method": ref.method, "init": ref.init, "anchor_init": ref.anchor_init,
            "expert_seed": ref.expert_seed, "seed": ref.seed, "block": ref.block, "task": ref.task, "wall_s": bench["wall_s"],
            "cpu_s": float(usage["cpu_s"]) if by_job and usage.get("cpu_s") is not None else bench["cpu_s"],
            "max_rss_mb": float(usage["max_rss_mb"]) if by_job and usage.get("max_rss_mb") is not None else bench["max_rss_mb"],
            "gpu_peak_mb": float(usage["gpu_peak_mb"]) if by_job and usage.get("gpu_peak_mb") is not None else math.nan,
            "measured_by": "job" if by_job else "snakemake", "flops": flops, "benchmark": Path(path).as_posix(),
        })
    df = pd.DataFrame.from_records(records, columns=JOB_COLUMNS)
    df["expert_seed"] = df["expert_seed"].astype(int)
    df["seed"] = df["seed"].astype("Int64")
    df["block"] = df["block"].astype("Int64")
    order = ["stage", "method", "init", "anchor_init", "expert_seed", "seed", "block", "task"]
    return df.sort_values(order, kind="stable").reset_index(drop=True)


def _is(column: pd.Series, value: Any) -> pd.Series:
    """``column == value`` as a plain boolean mask (missing values: False)."""
    return (column == value).fillna(False).astype(bool)


def _sum(values: pd.Series) -> float:
    """Sum ignoring NaN, NaN when every value is NaN (or there is none)."""
    return float(values.sum(min_count=1))


def _max(values: pd.Series) -> float:
    return float(values.max()) if values.notna().any() else math.nan


def row_costs(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per method row and run (:data:`ROW_COLUMNS`), from :func:`job_costs`: baselines per expert
    seed from their merge job (seed empty: one merge), FDA rows per (init, anchor init, expert
    seed, seed) from construction, adaptation and the init's merge of that expert seed (see the
    module docstring). ``flops``: a baseline's estimate (NaN for closed-form merges); an FDA row's
    construction + adaptation + its init's merge (a closed-form merge adding none), NaN when a
    construction or adaptation job has no estimate."""
    out = []
    jobs = jobs if "expert_seed" in jobs.columns else jobs.assign(expert_seed=0)
    merges = jobs[_is(jobs["stage"], "merge")]
    evals = jobs[_is(jobs["stage"], "evaluate")]
    for (method, eseed), group in merges.groupby(["method", "expert_seed"], sort=False):
        ev = evals[_is(evals["method"], method) & _is(evals["expert_seed"], eseed)]
        out.append(_row(method, "", "", int(eseed), None, group, merge=group, eval_jobs=ev))
    adapt = jobs[_is(jobs["stage"], "adapt")]
    for (init, anchor, eseed, seed), group in adapt.groupby(["init", "anchor_init", "expert_seed", "seed"], sort=False):
        same_run = _is(jobs["expert_seed"], eseed)
        construct = jobs[_is(jobs["stage"], "construct") & _is(jobs["anchor_init"], anchor) & _is(jobs["seed"], seed) & same_run]
        init_merge = (merges[_is(merges["method"], init) & _is(merges["expert_seed"], eseed)] if init != "pretrained"
                      else merges.iloc[0:0])
        ev = evals[_is(evals["method"], "fda") & _is(evals["init"], init) & _is(evals["anchor_init"], anchor)
                   & _is(evals["seed"], seed) & _is(evals["expert_seed"], eseed)]
        row = _row("fda", init, anchor, int(eseed), int(seed), pd.concat([init_merge, construct, group]), merge=init_merge,
                   eval_jobs=ev)
        row["construct_s"] = _sum(construct["wall_s"])
        row["adapt_s"] = _sum(group["wall_s"])
        # an unknown construction or adaptation estimate leaves the row unknown; a closed-form init merge adds none
        steps = pd.concat([construct["flops"], group["flops"]])
        row["flops"] = math.nan if steps.isna().any() else float(steps.sum() + init_merge["flops"].fillna(0).sum())
        out.append(row)
    df = pd.DataFrame.from_records(out, columns=ROW_COLUMNS)
    df["seed"] = df["seed"].astype("Int64")
    return df


def _row(method: str, init: str, anchor: str, expert_seed: int, seed: int | None, counted: pd.DataFrame, *,
         merge: pd.DataFrame, eval_jobs: pd.DataFrame) -> dict[str, Any]:
    return {"method": method, "init": init, "anchor_init": anchor, "expert_seed": expert_seed, "seed": seed,
            "row": row_label(method, init, anchor),
            "merge_s": _sum(merge["wall_s"]), "construct_s": math.nan, "adapt_s": math.nan,
            "wall_s": _sum(counted["wall_s"]), "cpu_s": _sum(counted["cpu_s"]), "max_rss_mb": _max(counted["max_rss_mb"]),
            "gpu_peak_mb": _max(counted["gpu_peak_mb"]), "flops": _sum(counted["flops"]), "eval_s": _sum(eval_jobs["wall_s"]),
            "jobs": len(counted)}


# -------------------------------------------------------------------------------- the table

#: the cost table's value columns (means over a row's runs) and their display names
TABLE_COLUMNS = {"merge_s": "Merge (s)", "construct_s": "Construction (s)", "adapt_s": "Adaptation (s)",
                 "wall_s": "Wall (s)", "cpu_s": "CPU (s)", "max_rss_mb": "Peak RSS (MiB)", "gpu_peak_mb": "Peak GPU (MiB)",
                 "flops": "FLOPs (est.)", "eval_s": "Eval (s)"}


def accuracy_by_seed(cells: pd.DataFrame, suite: str, tasks: Sequence[str]) -> pd.DataFrame:
    """Per (method, init, anchor_init, expert_seed, seed), one run: the mean over ``tasks`` of the
    headline metric (``value``, unscaled); NaN when a task is missing for that run. Fixed rows only."""
    cells = fixed_only(cells)
    df = cells[(cells["suite"] == suite) & cells["headline"].astype(bool) & cells["task"].isin(list(tasks))]
    df = df.assign(init=df["init"].fillna("").astype(str), anchor_init=df["anchor_init"].fillna("").astype(str))
    if "expert_seed" not in df.columns:
        df = df.assign(expert_seed=0)
    run = KEY + ["expert_seed", "seed"]
    per_task = df.groupby(run + ["task"], sort=False)["value"].mean().reset_index()
    wide = per_task.pivot_table(index=run, columns="task", values="value", aggfunc="mean", sort=False)
    wide = wide.reindex(columns=list(tasks))
    return wide.mean(axis=1, skipna=False).rename("avg").reset_index()


def cost_table(rows: pd.DataFrame, cells: pd.DataFrame, suite: str, tasks: Sequence[str]) -> pd.DataFrame:
    """Per method row (the accuracy table's rows and order, then any row without cells): ``seeds``
    (``E×K``: E expert seeds × K FDA seeds per expert seed; baselines have one), the mean over the
    row's runs (expert seed, FDA seed) of every :data:`TABLE_COLUMNS` entry, ``wall_s min``/``wall_s
    max`` over runs, and ``Avg`` (the suite table's Avg, unscaled) with ``Avg min``/``Avg max`` over
    runs. Pretrained and Individual have no method cost and are left out. Fixed-protocol rows only
    (a validated row's grid jobs are not counted yet: docs/selection.md)."""
    cells = fixed_only(cells)
    keyed = rows.assign(init=rows["init"].fillna(""), anchor_init=rows["anchor_init"].fillna(""))
    if "expert_seed" not in keyed.columns:
        keyed = keyed.assign(expert_seed=0)
    agg = keyed.groupby(KEY, sort=False).agg(
        **{c: (c, "mean") for c in TABLE_COLUMNS},
        **{"wall_s min": ("wall_s", "min"), "wall_s max": ("wall_s", "max")}).reset_index()
    agg.insert(3, "seeds", [_seed_count(g) for _, g in keyed.groupby(KEY, sort=False)])
    accuracy = build_table(cells, suite, tasks, "value")[KEY + ["row", AVG]] if len(cells) else pd.DataFrame(columns=KEY + ["row", AVG])
    spread = accuracy_by_seed(cells, suite, tasks).groupby(KEY, sort=False)["avg"].agg(["min", "max"]) if len(cells) else None
    order = [tuple(k) for k in accuracy[KEY].itertuples(index=False)]
    keys = [k for k in order if k in set(map(tuple, agg[KEY].itertuples(index=False)))]
    keys += [tuple(k) for k in agg[KEY].itertuples(index=False) if tuple(k) not in set(order)]
    agg = agg.set_index(KEY).reindex(pd.MultiIndex.from_tuples(keys, names=KEY)).reset_index()
    agg.insert(3, "row", [row_label(*k) for k in keys])
    avg = accuracy.set_index(KEY)[AVG]
    agg[AVG] = [float(avg.get(k, math.nan)) for k in keys]
    agg[f"{AVG} min"] = [float(spread.loc[k, "min"]) if spread is not None and k in spread.index else math.nan for k in keys]
    agg[f"{AVG} max"] = [float(spread.loc[k, "max"]) if spread is not None and k in spread.index else math.nan for k in keys]
    return agg


def _seed_count(runs: pd.DataFrame) -> str:
    """``E×K`` for one row's runs: E expert seeds, K FDA seeds per expert seed (the most any has)."""
    per_expert = runs.groupby("expert_seed")["seed"].nunique(dropna=False)
    return f"{len(per_expert)}×{int(per_expert.max())}"


def _fmt_num(v: float, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if kind == "flops":
        return f"{v:.2e}"
    if kind in ("max_rss_mb", "gpu_peak_mb"):
        return f"{v:.0f}"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def render_cost(table: pd.DataFrame, scale: float, decimals: int) -> tuple[list[str], list[list[str]]]:
    """Header and string rows (Markdown/LaTeX) of :func:`cost_table`: Avg (× ``scale``; ± half its 95%
    interval where the table has ``Avg lo``/``Avg hi``), then the costs."""
    header = ["Method", AVG, *TABLE_COLUMNS.values()]
    body = []
    for _, r in table.iterrows():
        avg = "–" if math.isnan(r[AVG]) else f"{r[AVG] * scale:.{decimals}f}"
        lo, hi = float(r.get(f"{AVG} lo", math.nan)), float(r.get(f"{AVG} hi", math.nan))
        if avg != "–" and not (math.isnan(lo) or math.isnan(hi)):
            avg += f" ±{(hi - lo) * scale / 2:.{decimals}f}"  # half the 95% interval, as the suite's tables
        body.append([str(r["row"]), avg, *(_fmt_num(float(r[c]), c) for c in TABLE_COLUMNS)])
    return header, body


def cost_paths(tables_dir: str | os.PathLike, suite: str) -> dict[str, Path]:
    d = Path(tables_dir)
    return {ext: d / f"{suite}-cost.{ext}" for ext in ("csv", "md", "tex")}


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_frame(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(Path(path)) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


COST_NOTE = ("Cost of one run of the row's method (one expert seed and FDA seed), mean over the row's runs: wall and CPU time summed over its jobs, peak memory "
             "of its largest job (RSS: host; GPU: torch's peak allocation, – off GPU), FLOPs estimated for the "
             "optimising steps (FDA construction and adaptation, WUDI; – = closed-form merge). FDA rows count the "
             "construction of their anchors and their init's merge in full, although every init shares the anchors "
             "and the baseline row shares the merge. Not counted: data, experts, evaluation (Eval: its wall time, "
             "apart). docs/cost.md.")
INTERVAL_NOTE = (" Avg ± = half the width of its 95% interval (bootstrap over test examples, expert seeds and FDA seeds; "
                 "docs/statistics.md).")


def write_cost_table(table: pd.DataFrame, suite: str, tables_dir: str | os.PathLike, values: pd.Series | None = None) -> dict[str, Path]:
    """``{suite}-cost.{csv,md,tex}`` from :func:`cost_table`; Avg in the suite table's unit."""
    from fda.bench.report.tables import PERCENT_SUITES

    paths = cost_paths(tables_dir, suite)
    scale = scale_for(suite, values)
    decimals = 2 if scale == 100.0 or suite in PERCENT_SUITES else 4
    write_frame(table, paths["csv"])
    h, b = render_cost(table, scale, decimals)
    seeds = sorted({str(s) for s in table["seeds"].dropna()})
    note = COST_NOTE + (INTERVAL_NOTE if f"{AVG} lo" in table.columns else "")
    note += f" Seeds per row (expert × FDA): {', '.join(seeds)}." if seeds else ""
    _write_text(f"### {suite}: accuracy and cost\n\n{note}\n\n" + to_markdown(h, b), paths["md"])
    _write_text(to_latex(h, b, f"{suite}: accuracy (Avg) and cost per method row"), paths["tex"])
    return paths
