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
    merge            merge experts with a baseline (ta, tsvm, wudi, average, ties)
  fda_jobs.py
    fda-construct    construct FDA anchors for some blocks (and experts)
    fda-adapt        adapt some blocks on the anchors (per-block cache), optionally assemble
    fda-assemble     assemble adapted blocks into the merged encoder
  evaluation.py
    evaluate         evaluate an encoder (or each expert on its own task) -> raw rows
  aggregation.py
    cell             raw rows -> one tidy result cell
    aggregate        result cells -> paper-shaped tables (CSV, Markdown, LaTeX)
    figures          result cells -> method comparison and heatmap (PNG, PDF)
    construction-figures  construction logs -> curves and singular value spectra
  llm.py (LLM suites: llama13b)
    stream-merge, convert-bin, llm-construct, llm-adapt, llm-assemble, llm-eval

The helpers the families share live in common.py; the family modules import only from it, never
from each other. Heavy imports (torch, transformers, the suites) happen inside the commands that
need them, so ``validate-config`` and ``cells`` answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from fda.bench.cli import aggregation, configs, data, evaluation, fda_jobs, llm, merges
from fda.bench.cli.common import log

#: commands that may put tensors on a GPU (they lease a GPU slot, see fda.bench.gpu)
GPU_COMMANDS = {"prepare-base", "prepare-expert", "merge", "fda-construct", "fda-adapt", "fda-assemble", "evaluate",
                "stream-merge", "llm-construct", "llm-adapt", "llm-eval"}

#: the family modules, in the order ``fda-bench --help`` lists their commands
FAMILIES = (configs, data, merges, fda_jobs, evaluation, aggregation, llm)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fda-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from fda import __version__

    p.add_argument("--version", action="version", version=f"fda-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    for family in FAMILIES:
        family.register(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in GPU_COMMANDS:
        from fda.bench.gpu import gpu_slot

        with gpu_slot() as slot:
            if slot is not None:
                log(f"pinned to GPU {slot}")
            return int(args.func(args) or 0)
    return int(args.func(args) or 0)
