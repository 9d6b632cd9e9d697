"""``fda-bench cell``, ``aggregate``, ``figures``, ``construction-figures``: raw rows and logs ->
result cells, tables and figures; ``join-runs``: the cells of runs over disjoint seeds -> one
set, with its tables, figures and costs; ``claims``: the paper's claims on runs' outcomes;
``paper-tables``: the paper's own tables (ablations) in
Markdown. No model is loaded."""

from __future__ import annotations

import argparse

from fda.bench.cli.common import AddCommand, log
from fda.bench.config.vocabulary import ANCHOR_SOURCES


def cmd_cell(args: argparse.Namespace) -> int:
    import pandas as pd

    from fda.bench.report.results import build_cell, read_raw, write_cell

    raw = [read_raw(p) for p in args.raw]
    individual = pd.concat([read_raw(p) for p in args.individual], ignore_index=True)
    cell = build_cell(raw, individual, suite=args.suite, expert_source=args.expert_source,
                      config_hash=args.config_hash, qkv_layout=args.qkv_layout, anchor_source=args.anchor_source)
    write_cell(cell, args.out)
    if args.outcomes:
        write_cell_outcomes(cell, args.raw, args.outcomes)
    return 0


def write_cell_outcomes(cell, raw_paths: list[str], out: str) -> None:
    """The per-example outcomes of a cell's evaluations (each beside its raw CSV) in one file;
    every (method, init, anchor init, expert seed, seed, task, protocol) of the cell must have them."""
    from fda.bench.eval.outcomes import merge_outcomes, outcomes_path, write_outcomes
    from fda.bench.report.join import cell_outcome_keys, check_outcome_keys

    merged = merge_outcomes(outcomes_path(p) for p in raw_paths)
    check_outcome_keys(cell, merged, f"the evaluations {[str(outcomes_path(p)) for p in raw_paths[:2]]}..."
                       " (re-run their evaluation)")
    write_outcomes({k: merged[k] for k in sorted(cell_outcome_keys(cell))}, out)


def cmd_aggregate(args: argparse.Namespace) -> int:
    from fda.bench.report.results import read_cells
    from fda.bench.report.tables import write_tables

    paths = write_tables(read_cells(args.cells), args.suite, args.tasks, args.out_dir, args.paper,
                         outcomes=_outcomes(args.outcomes))
    log(f"wrote {len(paths)} table files to {args.out_dir}")
    return 0


def _outcomes(paths: list[str] | None):
    from fda.bench.eval.outcomes import merge_outcomes

    return merge_outcomes(paths) if paths else None


def cmd_figures(args: argparse.Namespace) -> int:
    from fda.bench.report.figures import write_cell_figures
    from fda.bench.report.results import read_cells

    paths = write_cell_figures(read_cells(args.cells), args.suite, args.tasks, args.out_dir, _outcomes(args.outcomes))
    log(f"wrote {len(paths)} figure files to {args.out_dir}")
    return 0


def cmd_construction_figures(args: argparse.Namespace) -> int:
    from fda.bench.report.figures import write_construction_figures

    paths = write_construction_figures(args.suite, args.anchor_init, args.logs, args.out_dir)
    log(f"wrote {len(paths)} figure files to {args.out_dir}")
    return 0


def cmd_join_runs(args: argparse.Namespace) -> int:
    """Join the cells (with outcomes) and per-job costs of runs over disjoint seeds of one
    configuration into ``--out`` and render its tables, figures and cost tables."""
    from pathlib import Path

    import pandas as pd

    from fda.bench.cli.common import UsageError
    from fda.bench.config import suite_views
    from fda.bench.config.load import load_config
    from fda.bench.eval.outcomes import outcomes_path, write_outcomes
    from fda.bench.report.cost import write_frame
    from fda.bench.report.cost_figure import write_costs
    from fda.bench.report.figures import write_cell_figures
    from fda.bench.report.join import check_outcome_keys, join_cells, join_jobs, join_outcomes
    from fda.bench.report.results import write_cell
    from fda.bench.report.tables import write_tables
    from fda.io.atomic import atomic_dir

    runs = [Path(r) for r in args.runs]
    out = Path(args.out)
    if out.resolve() in {r.resolve() for r in runs}:
        raise UsageError(f"--out {out} is one of the runs: write the join to a new directory")
    config = load_config([args.config])
    # everything goes to a temporary sibling first: a run that fails half-way leaves no partial join
    with atomic_dir(out) as tmp:
        for suite in args.suite or list(config["suites"]):
            names = [sorted(p.name for p in run.glob(f"{suite}_*.csv")) for run in runs]
            if not names[0]:
                raise UsageError(f"{runs[0]} holds no cells of suite {suite!r} ({suite}_*.csv)")
            for run, have in zip(runs[1:], names[1:]):
                if have != names[0]:
                    raise UsageError(f"{run} and {runs[0]} hold different cells of {suite}: "
                                     f"{sorted(set(have) ^ set(names[0]))}; join runs of one configuration")
            tasks = suite_views.result_tasks(config, suite)
            cells, outcomes = [], {}
            for name in names[0]:
                cell = join_cells([run / name for run in runs])
                joined = join_outcomes(outcomes_path(run / name) for run in runs)
                check_outcome_keys(cell, joined, name)
                write_cell(cell, tmp / name)
                write_outcomes(joined, outcomes_path(tmp / name))
                cells.append(cell)
                outcomes.update(joined)
            frame = pd.concat(cells, ignore_index=True)
            paths = list(write_tables(frame, suite, tasks, tmp / "tables", outcomes=outcomes).values())
            paths += write_cell_figures(frame, suite, tasks, tmp / "figures", outcomes)
            job_files = [run / "costs" / f"{suite}.csv" for run in runs]
            if all(p.is_file() for p in job_files):
                jobs = join_jobs(job_files)
                write_frame(jobs, tmp / "costs" / f"{suite}.csv")
                paths += write_costs(jobs, frame, suite, tasks, outcomes, tmp / "tables", tmp / "figures")[0]
            else:
                log(f"{suite}: no cost table (per-job costs missing in {[str(p) for p in job_files if not p.is_file()]})")
            log(f"{suite}: joined {len(names[0])} cells of {len(runs)} runs into {out}; wrote {len(paths)} table and figure files")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    """The paper's claims on each run's outcomes, paired intervals, and in how many runs each held."""
    from pathlib import Path

    from fda.bench.cli.common import UsageError
    from fda.bench.eval.outcomes import TASK, merge_outcomes
    from fda.bench.report.claims import check_claims, render_claims
    from fda.bench.report.tables import scale_for
    from fda.io.atomic import atomic_path

    text = []
    for suite in args.suite:
        runs = {}
        for run in args.runs:
            files = sorted(Path(run).glob(f"{suite}_*.npz"))
            if not files:
                raise UsageError(f"{run} holds no per-example outcomes of {suite} ({suite}_*.npz)")
            outcomes = merge_outcomes(files)
            tasks = sorted({key[TASK] for key in outcomes})  # Avg is over every task the run scored
            runs[_run_label(Path(run), runs)] = check_claims(outcomes, tasks)
        text.append(f"### {suite}\n\n" + render_claims(runs, scale_for(suite)))
    out = "\n".join(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(out)
    print(out, end="")
    return 0


def _run_label(run, taken) -> str:
    """A run's column name: its directory (the one above a ``results`` directory), or its whole
    path when that name is taken."""
    name = run.parent.name if run.name == "results" and run.parent.name else run.name
    return name if name not in taken else str(run)


def cmd_paper_tables(args: argparse.Namespace) -> int:
    from fda.bench.cli.common import UsageError
    from fda.bench.report.published import paper_data, paper_grids
    from fda.bench.report.tables import to_markdown
    from fda.io.atomic import atomic_path

    known = list(dict.fromkeys(paper_data(args.paper)["suite"]))
    unknown = [s for s in args.suite or () if s not in known]
    if unknown:
        raise UsageError(f"no published table for {unknown}; the paper's tables: {', '.join(known)}")
    text = "<!-- generated by `fda-bench paper-tables` from fda/bench/report/data/paper_tables.csv -->\n\n" + "\n".join(
        f"### {g.title}\n\n" + to_markdown(g.header, g.body) + "".join(f"\n{n}\n" for n in g.notes)
        for g in paper_grids(args.suite, args.paper))
    if not args.out:
        print(text, end="")
        return 0
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    log(f"wrote {args.out}")
    return 0


def register(add: AddCommand) -> None:
    """Register cell, aggregate, figures and construction-figures (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("cell", cmd_cell, "raw evaluation rows -> one tidy result cell")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--raw", action="append", required=True)
    sp.add_argument("--individual", action="append", required=True,
                    help="raw rows of the individual experts (for `normalized`), one file per expert seed")
    sp.add_argument("--expert-source", required=True)
    sp.add_argument("--qkv-layout", default="split", choices=["split", "fused"], help="q/k/v layout the merges ran in")
    sp.add_argument("--anchor-source", default="constructed", choices=ANCHOR_SOURCES,
                    help="where the FDA rows' anchors come from (recorded on FDA rows)")
    sp.add_argument("--config-hash", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--outcomes", help="also gather the per-example outcomes beside each --raw file into this .npz")

    sp = add("aggregate", cmd_aggregate, "result cells -> paper-shaped tables")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True, help="column order")
    sp.add_argument("--cells", nargs="+", required=True)
    sp.add_argument("--paper", help="paper numbers CSV (default: the packaged paper_tables.csv)")
    sp.add_argument("--outcomes", nargs="+", help="the cells' per-example outcomes (.npz): adds 95%% intervals")
    sp.add_argument("--out-dir", required=True)

    sp = add("figures", cmd_figures, "result cells -> method comparison and per-task heatmap")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True)
    sp.add_argument("--cells", nargs="+", required=True)
    sp.add_argument("--outcomes", nargs="+", help="the cells' per-example outcomes (.npz): adds error bars")
    sp.add_argument("--out-dir", required=True)

    sp = add("construction-figures", cmd_construction_figures,
             "construction logs -> loss/cosine curves and anchor singular value spectra")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--anchor-init", required=True)
    sp.add_argument("--logs", nargs="+", required=True, help="construction logs (JSON next to the anchors)")
    sp.add_argument("--out-dir", required=True)

    sp = add("join-runs", cmd_join_runs, "cells of runs over disjoint seeds -> one set, with tables, figures and costs")
    sp.add_argument("runs", nargs="+", help="result directories ({suite}_{method}.csv + .npz, costs/{suite}.csv), e.g. results/reference-seeds")
    sp.add_argument("--out", required=True, help="a new directory for the joined cells, tables/, figures/, costs/")
    sp.add_argument("--config", default="config/config.yaml", help="the runs' config (the tables' task columns)")
    sp.add_argument("--suite", nargs="+", help="suites to join (default: every suite of --config)")

    sp = add("claims", cmd_claims, "the paper's claims on runs' outcomes: paired intervals, in how many runs each held")
    sp.add_argument("runs", nargs="+", help="result directories holding {suite}_*.npz outcomes (one column each)")
    sp.add_argument("--suite", nargs="+", required=True)
    sp.add_argument("--out", help="Markdown file (default: stdout)")

    sp = add("paper-tables", cmd_paper_tables, "the paper's published tables as printed, flags as footnotes (Markdown)")
    sp.add_argument("--suite", nargs="+", help="suites of paper_tables.csv (default: the ablations)")
    sp.add_argument("--paper", help="paper numbers CSV (default: the packaged paper_tables.csv)")
    sp.add_argument("--out", help="Markdown file (default: stdout)")
