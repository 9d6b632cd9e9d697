"""``fda-bench``: the command line the Snakemake rules call. Each subcommand is a thin wrapper:
parse arguments, load inputs, call the library, write outputs atomically.

Subcommands (``fda-bench <cmd> -h`` for arguments), by the module of fda/bench/cli/ that holds them:

  configs.py
    validate-config  check config files (+ KEY=VALUE overrides) against the workflow schema
    cells            list the result cells a config asks for
  data.py
    prepare-data     write a suite's datasets
    prepare-base     write a suite's pretrained encoder
    prepare-expert   fetch, copy or fine-tune one task's expert
  merges.py
    merge            merge experts with a baseline (ta, tsvm, wudi, average, ties, isoc, isocts)
  fda_jobs.py
    fda-construct    construct FDA anchors for some blocks (and experts)
    fda-adapt        adapt some blocks on the anchors (per-block cache), optionally assemble
    fda-assemble     assemble adapted blocks into the merged encoder
  anchors.py
    import-anchors   the FDA authors' released anchors (.npy) -> anchor files (adapt without constructing)
  evaluation.py
    evaluate         evaluate an encoder (or each expert on its own task) -> raw rows
  selection.py
    select           grid points' validation rows -> the validated protocol's choice (JSON)
  aggregation.py
    cell             raw rows -> one tidy result cell
    aggregate        result cells -> paper-shaped tables (CSV, Markdown, LaTeX)
    figures          result cells -> method comparison and heatmap (PNG, PDF)
    construction-figures  construction logs -> curves and singular value spectra
    join-runs        the cells, outcomes and costs of runs over disjoint seeds -> one set, its tables and figures
    claims           the paper's claims on runs' outcomes: paired intervals, in how many runs each held
  costs.py
    costs            benchmark files and job logs -> cost per method row (table, accuracy-vs-cost figure)
    paper-tables     the paper's own tables (default: its ablations) as printed, in Markdown
  llm.py (LLM suites: llama13b)
    stream-merge, convert-bin, llm-construct, llm-adapt, llm-assemble, llm-eval

The helpers the families share live in common.py; the family modules import only from it, never
from each other. Heavy imports (torch, transformers, the suites) happen inside the commands that
need them, so ``validate-config`` and ``cells`` answer at once.

Errors: the project's own errors (``PROJECT_ERRORS``: an invalid config or setting, a missing or
corrupt asset, bad merge inputs, an unreadable checkpoint, ...) say what is wrong and how to fix
it, so ``main`` prints them as ``fda-bench <command>: error: <message>`` on stderr and returns
``EXIT_ERROR`` (2, as for a usage error); ``--debug`` (or ``FDA_BENCH_DEBUG=1``) shows their
traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from fda.bench.cli import (
    aggregation,
    anchors,
    configs,
    costs,
    data,
    evaluation,
    fda_jobs,
    llm,
    merges,
    selection,
)
from fda.bench.cli.common import log

#: commands that may put tensors on a GPU (they lease a GPU slot, see fda.bench.gpu)
GPU_COMMANDS = {"prepare-base", "prepare-expert", "merge", "fda-construct", "fda-adapt", "fda-assemble", "evaluate",
                "stream-merge", "llm-construct", "llm-adapt", "llm-eval"}

#: commands whose resources (CPU time, peak RSS, peak GPU memory) the cost table counts: they print
#: one resources line when they finish (fda.bench.usage); evaluation is reported apart
MEASURED_COMMANDS = {"merge", "fda-construct", "fda-adapt", "fda-assemble", "evaluate",
                     "stream-merge", "llm-construct", "llm-adapt", "llm-assemble", "llm-eval"}

#: the family modules, in the order ``fda-bench --help`` lists their commands
FAMILIES = (configs, data, merges, fda_jobs, anchors, evaluation, selection, aggregation, costs, llm)

#: exit status of a command stopped by one of the project's errors (argparse's usage errors: 2 too)
EXIT_ERROR = 2

#: environment variable that turns on ``--debug`` (any of 1, true, yes, on)
DEBUG_ENV = "FDA_BENCH_DEBUG"

#: the project's error classes, as (module, class): their messages name what is wrong and how to
#: fix it, so the CLI prints them without a traceback. Subclasses count (CheckpointError covers
#: SourceError, StreamingError and ConversionError; BaselinesError covers UnknownMethodError,
#: HyperparameterError, MergeInputError and NonFiniteError; MissingAssetError covers
#: CorruptAssetError). Left out on purpose: baselines' RegistrationError (a broken method module: a bug).
PROJECT_ERRORS: tuple[tuple[str, str], ...] = (
    ("fda.bench.cli.common", "UsageError"),
    ("fda.bench.config.vocabulary", "ConfigError"),
    ("fda.bench.settings", "SettingsError"),
    ("fda.bench.suites.assets", "MissingAssetError"),
    ("fda.bench.report.results", "CellError"),
    ("fda.bench.eval.outcomes", "OutcomeError"),
    ("fda.bench.selection", "SelectionError"),
    ("fda.bench.gpu", "GPUSlotError"),
    ("fda.bench.official_anchors", "OfficialAnchorsError"),
    ("fda.bench.eval.llm.data", "LLMEvalDataError"),
    ("fda.bench.eval.llm.sandbox", "SandboxUnavailableError"),
    ("fda.io.checkpoints", "CheckpointError"),
    ("fda.config", "FDAConfigError"),
    ("fda.blocks", "UnknownModelFamilyError"),
    ("baselines.errors", "BaselinesError"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fda-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from fda import __version__

    p.add_argument("--version", action="version", version=f"fda-bench {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of the project's errors (also: {DEBUG_ENV}=1); goes before COMMAND")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    for family in FAMILIES:
        family.register(add)
    return p


def project_error_classes() -> tuple[type[BaseException], ...]:
    """The classes of ``PROJECT_ERRORS`` whose modules are imported (an exception of a class whose
    module was never imported cannot have been raised, so nothing is imported here)."""
    found = []
    for module, name in PROJECT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def is_project_error(err: BaseException) -> bool:
    """Whether ``err`` is one of the project's errors (printed without a traceback)."""
    return isinstance(err, project_error_classes())


def debug_requested(args: argparse.Namespace) -> bool:
    """``--debug`` or ``FDA_BENCH_DEBUG`` set to 1, true, yes or on."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def report_error(command: str, err: BaseException) -> None:
    """``fda-bench <command>: error: <message>`` on stderr, then how to see the traceback."""
    message = str(err).strip() or type(err).__name__
    print(f"fda-bench {command}: error: {message}", file=sys.stderr)
    print(f"fda-bench {command}: rerun as `fda-bench --debug {command} ...` (or with {DEBUG_ENV}=1) to see the traceback",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command (on a leased GPU slot for ``GPU_COMMANDS``); its exit status. A
    ``MEASURED_COMMANDS`` command that succeeds ends with its resources line."""
    if args.command in GPU_COMMANDS:
        from fda.bench.gpu import gpu_slot

        with gpu_slot() as slot:
            if slot is not None:
                log(f"pinned to GPU {slot}")
            status = int(args.func(args) or 0)
    else:
        status = int(args.func(args) or 0)
    if status == 0 and args.command in MEASURED_COMMANDS:
        from fda.bench.usage import usage_line

        print(usage_line(), file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fda-bench`` command: parse ``argv``, run the command, turn the project's errors into
    one message and ``EXIT_ERROR`` (with ``--debug``: their traceback). Other exceptions propagate."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except Exception as err:
        if debug_requested(args) or not is_project_error(err):
            raise
        report_error(args.command, err)
        return EXIT_ERROR
