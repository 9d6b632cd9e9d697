"""``fda-bench costs``: benchmark files, job logs and construction logs -> what each method row cost
(per-job CSV, cost table, accuracy-versus-cost figure). No model is loaded (WUDI's FLOPs read the
merged file's header only). docs/cost.md."""

from __future__ import annotations

import argparse

from fda.bench.cli.common import AddCommand, UsageError, json_arg, log


def epochs_arg(text: str) -> tuple[str, int]:
    """``INIT=EPOCHS``: an FDA init's adaptation epochs (for the FLOPs estimate)."""
    init, sep, value = text.partition("=")
    if not sep or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected INIT=EPOCHS (e.g. ta=100), got {text!r}")
    return init, int(value)


def cmd_costs(args: argparse.Namespace) -> int:
    from fda.bench.report.cost import job_costs, planned_files, write_frame, wudi_merge_flops
    from fda.bench.report.cost_figure import write_costs
    from fda.bench.report.cost_jobs import CostPlan
    from fda.bench.report.results import read_cells

    merge_flops = {}
    if args.wudi_model:
        if args.experts is None:
            raise UsageError("--wudi-model needs --experts (the number of task matrices WUDI merged)")
        merge_flops["wudi"] = wudi_merge_flops(args.wudi_model, args.wudi_hparams, args.experts)
    benchmarks, anchor_logs = planned_files(CostPlan.from_json(args.plan), args.benchmarks_dir, args.work_dir)
    jobs = job_costs(benchmarks, anchor_logs, adapt_epochs=dict(args.adapt_epochs or []), merge_flops=merge_flops)
    write_frame(jobs, args.jobs_out)
    outcomes = None
    if args.outcomes:
        from fda.bench.eval.outcomes import merge_outcomes

        outcomes = merge_outcomes(args.outcomes)
    paths, rows = write_costs(jobs, read_cells(args.cells), args.suite, args.tasks, outcomes, args.tables_dir, args.figures_dir)
    log(f"{len(jobs)} jobs, {rows} method rows; wrote {args.jobs_out} and {len(paths)} table and figure files")
    return 0


def register(add: AddCommand) -> None:
    """Register costs (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("costs", cmd_costs, "benchmark files and logs -> cost per method row (table, accuracy-vs-cost figure)")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True, help="the accuracy table's columns (Avg over these)")
    sp.add_argument("--cells", nargs="+", required=True, help="the suite's result cells (accuracy)")
    sp.add_argument("--plan", required=True, help="what to count (JSON of fda.bench.report.cost_jobs.CostPlan)")
    sp.add_argument("--benchmarks-dir", required=True, help="the suite's benchmark files: logs/benchmarks/SUITE")
    sp.add_argument("--work-dir", help="the suite's work directory, with the construction logs (FLOPs): work/SUITE")
    sp.add_argument("--adapt-epochs", type=epochs_arg, action="append", metavar="INIT=EPOCHS",
                    help="adaptation epochs per FDA init (FLOPs)")
    sp.add_argument("--wudi-model", help="WUDI's merged model (its header: the merged shapes, for FLOPs)")
    sp.add_argument("--wudi-hparams", type=json_arg, default={}, help="WUDI's hyperparameters (JSON)")
    sp.add_argument("--experts", type=int, help="number of experts merged")
    sp.add_argument("--outcomes", nargs="+", help="the cells' per-example outcomes (.npz): Avg's 95%% intervals as error bars")
    sp.add_argument("--jobs-out", required=True, help="per-job CSV")
    sp.add_argument("--tables-dir", required=True, help="writes {suite}-cost.{csv,md,tex}")
    sp.add_argument("--figures-dir", required=True, help="writes {suite}-cost.{png,pdf}")
