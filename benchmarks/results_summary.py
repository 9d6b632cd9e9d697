"""The README's results table from a reference run's absolute tables: per method row and suite,
Avg ± half its 95% interval and Δ against the init with its paired interval (* where it excludes
0). Every number comes from the tables' CSV (``fda-bench aggregate`` with outcomes). Markdown to
stdout::

    python benchmarks/results_summary.py results/reference-seeds/tables minitext minivision
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd


def _pm(v: float, lo: float, hi: float, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return ""
    text = f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    if not math.isnan(lo):
        text += f" ±{100 * (hi - lo) / 2:.1f}"
    return text


def summary(tables_dir: Path, suites: list[str]) -> str:
    """One Markdown table: rows of the first suite's table, two columns (Avg, Δ) per suite."""
    frames = {s: pd.read_csv(tables_dir / f"{s}.csv", keep_default_na=False, na_values=[""]) for s in suites}
    header = ["method"] + [c for s in suites for c in (f"{s} Avg", "Δ vs init")]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (2 * len(suites))]
    rows = list(dict.fromkeys(r for f in frames.values() for r in f["row"]))
    for row in rows:
        cells = [row]
        for s in suites:
            f = frames[s].set_index("row")
            if row not in f.index:
                cells += ["", ""]
                continue
            r = f.loc[row]
            cells.append(_pm(r["Avg"], r.get("Avg lo", math.nan), r.get("Avg hi", math.nan)))
            delta = _pm(r["Δ"], r.get("Δ lo", math.nan), r.get("Δ hi", math.nan), signed=True)
            cells.append(delta + ("*" if delta and bool(r.get("Δ sig", False)) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = {s: sorted(set(frames[s]["seeds"])) if "seeds" in frames[s] else [] for s in suites}
    lines.append("")
    lines.append("Seeds per row (expert × FDA): " + "; ".join(f"{s}: {', '.join(map(str, v))}" for s, v in seeds.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables_dir", type=Path)
    ap.add_argument("suites", nargs="+")
    args = ap.parse_args(argv)
    sys.stdout.write(summary(args.tables_dir, args.suites))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
