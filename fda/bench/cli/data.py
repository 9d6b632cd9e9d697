"""``fda-bench prepare-data``, ``prepare-base``, ``prepare-expert``: a suite's inputs. Each builds
its directory under a temporary name and renames it into place, so a reader never sees a partial one."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from fda.bench.cli.common import AddCommand, UsageError, json_arg, replace_dir, suite_args, suite_of, suite_task


def _staging(out: Path) -> Path:
    """The temporary sibling a command builds ``out`` in, then renames (``replace_dir``); a killed
    run's leftover is removed first."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def cmd_prepare_data(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tmp = _staging(out)
    suite_of(args).prepare_data(tmp, args.seed)
    replace_dir(tmp, out)
    return 0


def cmd_prepare_base(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tmp = _staging(out)
    suite_of(args).prepare_base(tmp, Path(args.data), args.seed)
    replace_dir(tmp, out)
    return 0


def cmd_prepare_expert(args: argparse.Namespace) -> int:
    from fda.bench.config.suite_views import suite_takes_sources

    out = Path(args.out)
    tmp = _staging(out)
    source = args.source or {}
    # The paper suites fetch, convert and verify their experts themselves (the configured source
    # reaches them through --settings); for the embedded suites a {path} expert is a ready
    # directory to copy.
    if "path" in source and not suite_takes_sources(args.suite):
        if args.expert_seed != 0:
            raise UsageError(f"expert for task {args.task}: a copied {{path}} expert has one expert seed (0), "
                             f"not {args.expert_seed}")
        src = Path(source["path"])
        if not (src / "head.safetensors").is_file():
            raise UsageError(f"expert for task {args.task}: {src} must be an HF encoder directory with head.safetensors")
        shutil.copytree(src, tmp)
    else:
        suite = suite_of(args)
        suite.prepare_expert(suite_task(suite, args.task), Path(args.base), Path(args.data), tmp, args.seed,
                             expert_seed=args.expert_seed)
    replace_dir(tmp, out)
    return 0


def register(add: AddCommand) -> None:
    """Register prepare-data, prepare-base and prepare-expert (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("prepare-data", cmd_prepare_data, "write a suite's datasets")
    suite_args(sp)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("prepare-base", cmd_prepare_base, "write a suite's pretrained encoder (HF directory)")
    suite_args(sp)
    sp.add_argument("--data", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("prepare-expert", cmd_prepare_expert, "fetch, copy or fine-tune one task's expert")
    suite_args(sp)
    sp.add_argument("--task", required=True)
    sp.add_argument("--source", type=json_arg, default={}, help='expert spec (JSON): {"path": DIR}, {"hub": ID} or {"recipe": ...}')
    sp.add_argument("--base", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--seed", type=int, default=0, help="the data seed")
    sp.add_argument("--expert-seed", type=int, default=0,
                    help="the fine-tuning's randomness (data order, head init); 0 for fetched or copied experts")
    sp.add_argument("--out", required=True)
