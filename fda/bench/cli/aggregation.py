"""``fda-bench cell``, ``aggregate``, ``figures``, ``construction-figures``: raw rows and logs ->
result cells, tables and figures. No model is loaded."""

from __future__ import annotations

import argparse

from fda.bench.cli.common import AddCommand, log


def cmd_cell(args: argparse.Namespace) -> int:
    from fda.bench.report.results import build_cell, read_raw, write_cell

    raw = [read_raw(p) for p in args.raw]
    cell = build_cell(raw, read_raw(args.individual), suite=args.suite, expert_source=args.expert_source,
                      config_hash=args.config_hash, qkv_layout=args.qkv_layout)
    write_cell(cell, args.out)
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from fda.bench.report.results import read_cells
    from fda.bench.report.tables import write_tables

    paths = write_tables(read_cells(args.cells), args.suite, args.tasks, args.out_dir, args.paper)
    log(f"wrote {len(paths)} table files to {args.out_dir}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from fda.bench.report.figures import write_cell_figures
    from fda.bench.report.results import read_cells

    paths = write_cell_figures(read_cells(args.cells), args.suite, args.tasks, args.out_dir)
    log(f"wrote {len(paths)} figure files to {args.out_dir}")
    return 0


def cmd_construction_figures(args: argparse.Namespace) -> int:
    from fda.bench.report.figures import write_construction_figures

    paths = write_construction_figures(args.suite, args.anchor_init, args.logs, args.out_dir)
    log(f"wrote {len(paths)} figure files to {args.out_dir}")
    return 0


def register(add: AddCommand) -> None:
    """Register cell, aggregate, figures and construction-figures (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("cell", cmd_cell, "raw evaluation rows -> one tidy result cell")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--raw", action="append", required=True)
    sp.add_argument("--individual", required=True, help="raw rows of the individual experts (for `normalized`)")
    sp.add_argument("--expert-source", required=True)
    sp.add_argument("--qkv-layout", default="split", choices=["split", "fused"], help="q/k/v layout the merges ran in")
    sp.add_argument("--config-hash", required=True)
    sp.add_argument("--out", required=True)

    sp = add("aggregate", cmd_aggregate, "result cells -> paper-shaped tables")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True, help="column order")
    sp.add_argument("--cells", nargs="+", required=True)
    sp.add_argument("--paper", help="paper numbers CSV (default: the packaged paper_tables.csv)")
    sp.add_argument("--out-dir", required=True)

    sp = add("figures", cmd_figures, "result cells -> method comparison and per-task heatmap")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True)
    sp.add_argument("--cells", nargs="+", required=True)
    sp.add_argument("--out-dir", required=True)

    sp = add("construction-figures", cmd_construction_figures,
             "construction logs -> loss/cosine curves and anchor singular value spectra")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--anchor-init", required=True)
    sp.add_argument("--logs", nargs="+", required=True, help="construction logs (JSON next to the anchors)")
    sp.add_argument("--out-dir", required=True)
