"""``fda-bench merge``: a baseline merge (ta, tsvm, wudi, average, ties, isoc, isocts) of whole state dicts."""

from __future__ import annotations

import argparse
import json

from fda.bench.cli.common import AddCommand, json_arg, load_experts, log, suite_of, task_dir


def cmd_merge(args: argparse.Namespace) -> int:
    import baselines

    from fda.io.checkpoints import load_state_dict, save_state_dict

    pre = load_state_dict(args.base)
    tasks, experts = load_experts(args.expert)
    # TSV-M and WUDI are not invariant to splitting a matrix: merge in the suite's layout (fused
    # q/k/v for the paper's CLIP checkpoints), store in the canonical HF layout.
    suite = suite_of(args) if args.suite else None
    layout = suite.qkv_layout if suite is not None else "split"
    if suite is not None and hasattr(suite, "to_merge_layout"):
        pre, experts = suite.to_merge_layout(pre), [suite.to_merge_layout(e) for e in experts]
    log(f"merge {args.method} over {tasks} with {args.hparams} (qkv layout {layout})")
    merged = baselines.merge(args.method, pre, experts, **args.hparams)
    if suite is not None and hasattr(suite, "from_merge_layout"):
        merged = suite.from_merge_layout(merged)
    save_state_dict(merged, args.out, {"method": args.method, "hparams": json.dumps(args.hparams, sort_keys=True),
                                       "tasks": ",".join(tasks), "qkv_layout": str(layout)})
    return 0


def register(add: AddCommand) -> None:
    """Register merge (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("merge", cmd_merge, "merge experts with a baseline method (in the suite's merge layout)")
    sp.add_argument("--suite", help="suite name: merge in its layout (to_merge_layout/from_merge_layout) when it has one")
    sp.add_argument("--settings", type=json_arg, default={}, help="the suite's settings (JSON)")
    sp.add_argument("--method", required=True)
    sp.add_argument("--hparams", type=json_arg, default={}, help="method hyperparameters (JSON)")
    sp.add_argument("--base", required=True)
    sp.add_argument("--expert", type=task_dir, action="append", required=True, metavar="TASK=DIR")
    sp.add_argument("--out", required=True)
