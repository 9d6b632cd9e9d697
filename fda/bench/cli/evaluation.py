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


def chosen_model(args: argparse.Namespace) -> tuple[str, str, str]:
    """``(model, protocol, hparams)`` of a one-model evaluation: ``--model`` under the fixed
    protocol, or with ``--choice`` the model a select job chose (validated protocol, its chosen
    values as JSON)."""
    model = args.model[0] if args.model else None
    if not args.choice:
        return model, "fixed", ""
    from fda.bench.cli.common import UsageError
    from fda.bench.selection import read_choice, values_json

    if model:
        raise UsageError("give --model or --choice, not both (the choice names its model)")
    if args.split != "test":
        raise UsageError("--choice evaluates the chosen model on test; the validation scores are in the choice file")
    choice = read_choice(args.choice)
    mine = {"method": args.method, "expert_seed": args.expert_seed, "init": args.init, "anchor_init": args.anchor_init}
    if args.init:  # an FDA choice is per FDA seed too
        mine["seed"] = args.seed
    other = {k: choice.get(k) for k, v in mine.items() if choice.get(k) != v}
    if other:
        raise UsageError(f"{args.choice} is the choice of {other}, not of {({k: mine[k] for k in other})}")
    return choice["chosen"]["model"], choice["protocol"], values_json(choice["chosen"]["values"])


def evaluations(args: argparse.Namespace) -> list[tuple[str | None, str, str, str]]:
    """``[(model, protocol, hparams, out)]``: one per ``--model``/``--out`` pair (several models,
    e.g. a grid's points, share one process: the imports and data are loaded once), or the one
    evaluation of :func:`chosen_model`."""
    from fda.bench.cli.common import UsageError

    if len(args.out) == 1 and len(args.model or []) <= 1:
        return [(*chosen_model(args), args.out[0])]
    if len(args.model or []) != len(args.out):
        raise UsageError(f"{len(args.model or [])} --model but {len(args.out)} --out: give one --out per --model, in order")
    if args.choice or args.outcomes:
        raise UsageError("several --model/--out pairs take neither --choice nor --outcomes (evaluate those one at a time)")
    return [(m, "fixed", "", o) for m, o in zip(args.model, args.out)]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fda.io.checkpoints import load_state_dict
    from fda.bench.eval.outcomes import pop_outcomes, write_evaluation_outcomes
    from fda.bench.report.results import raw_frame, write_csv

    suite = suite_of(args)
    split = suite.check_split(args.split)  # before any model is read: a suite without validation says why
    jobs = evaluations(args)
    experts = dict(args.expert)
    for model, protocol, hparams, out in jobs:
        rows: list[dict[str, Any]] = []
        shared = load_state_dict(model) if model else None
        if shared is not None:
            refuse_non_finite(shared, model)
        for task in args.tasks:
            # `individual`: each task's own expert; otherwise the one merged encoder on every task
            state = shared
            if state is None:
                state = load_state_dict(experts[task])
                refuse_non_finite(state, experts[task])
            log(f"evaluate {args.method} {args.init} {args.anchor_init} {protocol} on {task} ({split})"
                + (f": {model}" if len(jobs) > 1 else ""))
            got = suite.evaluate(state, suite_task(suite, task), Path(args.base), Path(args.data), experts[task],
                                 limit=args.limit, split=split)
            rows += [{**r, "task": task} for r in got]  # rows carry the workflow's task name
        tags = {"method": args.method, "init": args.init, "anchor_init": args.anchor_init, "seed": args.seed,
                "expert_seed": args.expert_seed, "protocol": protocol}
        outcomes = pop_outcomes(rows, **tags)
        df = raw_frame(rows, **tags, hparams=hparams, split=split)
        if args.outcomes:
            write_evaluation_outcomes(outcomes, args.tasks, args.outcomes, args.suite)
        write_csv(df, out)
    return 0


def register(add: AddCommand) -> None:
    """Register evaluate (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("evaluate", cmd_evaluate, "evaluate an encoder on the suite's tasks -> raw rows CSV")
    suite_args(sp)
    sp.add_argument("--model", action="append", help="merged encoder (safetensors/HF dir); omit for `individual`; "
                                                      "repeat it with --out to score several models in one process")
    sp.add_argument("--choice", help="a select job's choice file (JSON): evaluate the model it chose, as the validated "
                                     "protocol, recording the chosen values (instead of --model)")
    sp.add_argument("--split", default="test", choices=["test", "validation"],
                    help="the split to score: test (default; result cells) or validation (selection only)")
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
    sp.add_argument("--out", action="append", required=True, help="raw rows CSV (one per --model, in order)")
    sp.add_argument("--outcomes", help="also write per-example outcomes here (.npz; see fda.bench.eval.outcomes)")
