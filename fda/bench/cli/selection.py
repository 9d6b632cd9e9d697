"""``fda-bench select``: one grid point's validation rows each -> the choice file of the validated protocol."""

from __future__ import annotations

import argparse

from fda.bench.cli.common import AddCommand, UsageError, json_arg, log


def point_file(text: str) -> tuple[str, str]:
    """``SCORES=MODEL``: a grid point's raw validation rows and the model they scored."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected SCORES_CSV=MODEL, got {text!r}")
    scores, model = text.split("=", 1)
    return scores, model


def cmd_select(args: argparse.Namespace) -> int:
    from fda.bench.config.grids import apply_values, grid_points
    from fda.bench.report.results import read_raw
    from fda.bench.selection import choice_record, point_score, values_label, write_choice

    points = grid_points(args.grid)
    if len(points) != len(args.point):
        raise UsageError(f"the grid has {len(points)} points but {len(args.point)} --point files were given (in grid order)")
    scores, per_task = [], []
    for (csv, _model), values in zip(args.point, points):
        score, tasks = point_score(read_raw(csv), args.tasks, where=f"{csv} ({values_label(values)})")
        scores.append(score)
        per_task.append(tasks)
    try:
        hparams = [apply_values(args.hparams, p) for p in points]
    except KeyError as err:  # e.g. adapt_lr_scale without the init's adapt_lr in --hparams
        raise UsageError(f"--hparams: {err.args[0]}; pass the resolved value in --hparams") from err
    record = choice_record(suite=args.suite, method=args.method, grid=args.grid, points=points,
                           hparams=hparams, models=[m for _, m in args.point],
                           scores=scores, task_scores=per_task, init=args.init, anchor_init=args.anchor_init,
                           expert_seed=args.expert_seed, seed=args.seed)
    write_choice(record, args.out)
    chosen = record["chosen"]
    log(f"select {args.suite} {args.method} expert seed {args.expert_seed}: "
        + "; ".join(f"{values_label(p)} -> {s:.4f}" for p, s in zip(points, scores))
        + f"; chosen {values_label(chosen['values'])} ({record['tie_rule']})"
        + (f"; at the edge of the grid for {', '.join(record['at_edge'])}: consider widening it" if record["at_edge"] else ""))
    return 0


def register(add: AddCommand) -> None:
    """Register select (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("select", cmd_select, "grid points' validation rows -> the validated protocol's choice (JSON)")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--method", required=True)
    sp.add_argument("--init", default="")
    sp.add_argument("--anchor-init", default="")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--expert-seed", type=int, default=0)
    sp.add_argument("--tasks", nargs="+", required=True, help="the tasks whose mean headline score is maximised")
    sp.add_argument("--grid", type=json_arg, required=True, help='the grid as JSON, e.g. \'{"alpha": [0.1, 0.3]}\'')
    sp.add_argument("--hparams", type=json_arg, default={}, help="the method's configured hyperparameters (JSON; FDA: the init's "
                                                                     "resolved adapt_lr, which adapt_lr_scale multiplies)")
    sp.add_argument("--point", type=point_file, action="append", required=True, metavar="SCORES_CSV=MODEL",
                    help="per grid point, in grid order: its raw validation rows and its model")
    sp.add_argument("--out", required=True)



