"""``fda-bench evaluate``: an encoder (or each expert on its own task) on a suite's tasks -> raw rows CSV."""

from __future__ import annotations

import argparse
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from fda.bench.cli.common import AddCommand, log, suite_args, suite_of, suite_task, task_dir


def refuse_non_finite(state: Mapping[str, Any], path: str | Path) -> None:
    """A model with NaN/inf weights scores at chance level, which would be written into a result
    cell as if it were a result: refuse it, naming the file and the first offending tensors."""
    from baselines.finite import is_finite
    from fda.io.checkpoints import CheckpointError

    bad = [k for k, t in state.items() if not is_finite(t)]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN/inf ({shown}); refusing to evaluate a "
                              "non-finite model (it would score at chance level): rebuild it (its merge's "
                              "hyperparameters may diverge) or replace the file")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fda.io.checkpoints import load_state_dict
    from fda.bench.eval.outcomes import pop_outcomes, write_evaluation_outcomes
    from fda.bench.report.results import raw_frame, write_csv

    suite = suite_of(args)
    experts = dict(args.expert)
    rows: list[dict[str, Any]] = []
    shared = load_state_dict(args.model) if args.model else None
    if shared is not None:
        refuse_non_finite(shared, args.model)
    for task in args.tasks:
        # `individual`: each task's own expert; otherwise the one merged encoder on every task
        state = shared
        if state is None:
            state = load_state_dict(experts[task])
            refuse_non_finite(state, experts[task])
        log(f"evaluate {args.method} {args.init} {args.anchor_init} on {task}")
        got = suite.evaluate(state, suite_task(suite, task), Path(args.base), Path(args.data), experts[task], limit=args.limit)
        rows += [{**r, "task": task} for r in got]  # rows carry the workflow's task name
    tags = {"method": args.method, "init": args.init, "anchor_init": args.anchor_init, "seed": args.seed,
            "expert_seed": args.expert_seed}
    outcomes = pop_outcomes(rows, **tags)
    df = raw_frame(rows, **tags)
    if args.outcomes:
        write_evaluation_outcomes(outcomes, args.tasks, args.outcomes, args.suite)
    write_csv(df, args.out)
    return 0


def register(add: AddCommand) -> None:
    """Register evaluate (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("evaluate", cmd_evaluate, "evaluate an encoder on the suite's tasks -> raw rows CSV")
    suite_args(sp)
    sp.add_argument("--model", help="merged encoder (safetensors/HF dir); omit for `individual`")
    sp.add_argument("--tasks", nargs="+", required=True)
    sp.add_argument("--base", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--expert", type=task_dir, action="append", required=True, metavar="TASK=DIR")
    sp.add_argument("--limit", type=int)
    sp.add_argument("--method", required=True)
    sp.add_argument("--init", default="")
    sp.add_argument("--anchor-init", default="")
    sp.add_argument("--seed", type=int, default=0, help="the FDA seed (other rows: the data seed)")
    sp.add_argument("--expert-seed", type=int, default=0, help="the experts' fine-tuning seed (recorded in every row)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--outcomes", help="also write per-example outcomes here (.npz; see fda.bench.eval.outcomes)")
