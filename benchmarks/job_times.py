"""Where a workflow run spent its time: Snakemake's per-job benchmark files summed by stage.

Every rule writes ``logs/benchmarks/{suite}/...tsv`` (wall seconds ``s``, peak RSS ``max_rss``
in MB). This sums them per suite and stage (data, base, experts, merges, FDA construction, FDA
adaptation, evaluation, the validated protocols' selection jobs, aggregation); the run's wall
time is less than the sum because ``--cores N`` runs N jobs at once. Markdown to stdout::

    python benchmarks/job_times.py logs/benchmarks
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

#: the validated protocols' jobs (docs/selection.md): grid merges and FDA grid runs, validation
#: scoring, the choice, the chosen model's test evaluation (its cell job counts with the cells)
SELECTION = "selection (validated rows)"
#: first matching path fragment -> stage name (order matters: "/select/" before "/adapt-" and "merge/")
STAGES = [
    ("/select/", SELECTION),
    ("prepare_data", "data"),
    ("prepare_base", "base model"),
    ("prepare_expert/", "experts (fine-tuning)"),
    ("merge/", "baseline merges"),
    ("/construct-", "FDA construction"),
    ("/adapt-", "FDA adaptation"),
    ("/assemble-", "FDA adaptation"),
    ("evaluate/", "evaluation"),
]


def stage_of(rel: str) -> str:
    return next((name for frag, name in STAGES if frag in rel), "cells, tables, figures")


def read_seconds(path: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one benchmark file (its last row: the last attempt)."""
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    last = rows[-1]
    rss = last.get("max_rss", "NA")
    return float(last["s"]), float(rss) if rss not in ("", "NA", "-") else float("nan")


def summarise(root: Path) -> dict[tuple[str, str], list[float]]:
    """``{(suite, stage): [jobs, seconds, max peak RSS MB]}``."""
    out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root).as_posix()
        suite = rel.split("/", 1)[0]
        seconds, rss = read_seconds(path)
        acc = out[(suite, stage_of(rel))]
        acc[0] += 1
        acc[1] += seconds
        acc[2] = max(acc[2], rss) if rss == rss else acc[2]
    return out


def markdown(summary: dict[tuple[str, str], list[float]]) -> str:
    lines = ["| suite | stage | jobs | job seconds | max peak RSS (MB) |", "|---|---|---:|---:|---:|"]
    totals: dict[str, float] = defaultdict(float)
    # table order: the pipeline's stages, then the selection, then the aggregation
    order = [name for _, name in STAGES if name != SELECTION] + [SELECTION, "cells, tables, figures"]
    for (suite, stage), (jobs, secs, rss) in sorted(summary.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        lines.append(f"| {suite} | {stage} | {int(jobs)} | {secs:.0f} | {rss:.0f} |")
        totals[suite] += secs
    for suite, secs in totals.items():
        lines.append(f"| {suite} | **all** | | **{secs:.0f}** | |")
    lines.append(f"| | **both suites** | | **{sum(totals.values()):.0f}** | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default="logs/benchmarks", help="Snakemake benchmark directory")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        p.error(f"{root} is not a directory: run the workflow first (make run)")
    print(markdown(summarise(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
