"""Paper-shaped tables from result cells: rows Pretrained, Individual, each baseline and
"FDA (init, anchor init)"; columns the tasks, Avg and Δ (row Avg minus the Avg of the row the FDA
run started from). Absolute and normalised (value / individual expert's value) versions, and the
paper's published numbers beside ours where it has them. Written as CSV, Markdown and LaTeX.

Tables use each task's headline metric (the first metric the suite's evaluation returns) and the
mean over every (expert seed, FDA seed) run of a row.

Rows of both protocols (docs/selection.md) stand side by side: a fixed row keeps its name (the
paper's: "TA"), its validated row follows it as "TA (validated, α=0.2)" with the values chosen (one
per expert seed, joined with "/" where they differ); the CSV's ``protocol`` column says which is
which. Cells without the column are fixed. The paper comparison holds fixed rows only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from fda.bench.config.vocabulary import ANCHOR_INITS, FDA_INITS, METHODS
from fda.bench.eval.outcomes import Outcome, OutcomeKey
from fda.bench.report import published
from fda.bench.report.intervals import RowIntervals, row_intervals
from fda.bench.selection import values_label
from fda.io.atomic import atomic_path

# row order: the vocabulary's (a method added there is placed and labelled here, or the table test fails)
BASELINE_ORDER = list(METHODS)
INIT_ORDER = list(FDA_INITS)
ANCHOR_ORDER = list(ANCHOR_INITS)
METHOD_LABELS = {"pretrained": "Pretrained", "individual": "Individual", "ta": "TA", "tsvm": "TSV-M",
                 "wudi": "WUDI", "average": "Average", "ties": "TIES", "isoc": "Iso-C", "isocts": "Iso-CTS"}
INIT_LABELS = {k: METHOD_LABELS[k] for k in FDA_INITS}
ANCHOR_LABELS = {"gauss": "Gauss", "weight": "Weight", "taskspan": "Task span"}
#: where an FDA row's anchors come from (the cells' anchor_source): built here is the unmarked default
ANCHOR_SOURCE_LABELS = {"constructed": "", "official": "official anchors"}
#: suites whose tables (and the paper's) are in percent; the others keep the metric's 0-1 scale
PERCENT_SUITES = {"minitext", "minivision", "vitb32", "vitb16", "vitl14", "llama13b"}
KEY = ["method", "init", "anchor_init"]
#: a table row: KEY and the protocol (fixed or validated)
ROW_KEY = KEY + ["protocol"]
FIXED = "fixed"
PROTOCOL_ORDER = ["fixed", "validated"]
AVG, DELTA = "Avg", "Δ"


def row_label(method: str, init: str = "", anchor_init: str = "", anchor_source: str = "",
              protocol: str = FIXED, chosen: str = "") -> str:
    """Display name of a table row: 'TA', 'FDA (WUDI, Gauss)', 'FDA (TA, Weight, official anchors)', ...;
    a validated row adds its protocol and ``chosen`` values: 'TA (validated, α=0.2)'."""
    if method == "fda":
        parts = [INIT_LABELS.get(init, init), ANCHOR_LABELS.get(anchor_init, anchor_init),
                 ANCHOR_SOURCE_LABELS.get(anchor_source, anchor_source)]
        if protocol != FIXED:
            parts += [protocol, chosen]
        return f"FDA ({', '.join(p for p in parts if p)})"
    name = METHOD_LABELS.get(method, method)
    if protocol != FIXED:
        return f"{name} ({', '.join(p for p in (protocol, chosen) if p)})"
    return name


def _row_order(key: tuple) -> tuple[int, int, int, str, int]:
    method, init, anchor = key[:3]
    protocol = _index(PROTOCOL_ORDER, key[3] if len(key) > 3 else FIXED)
    if method == "fda":
        return (len(BASELINE_ORDER) + 1, _index(INIT_ORDER, init), _index(ANCHOR_ORDER, anchor), "", protocol)
    if method in BASELINE_ORDER:
        return (BASELINE_ORDER.index(method), 0, 0, "", protocol)
    return (len(BASELINE_ORDER), 0, 0, method, protocol)  # paper-only rows (RegMean, ...) after ours


def _index(seq: Sequence[str], item: str) -> int:
    return seq.index(item) if item in seq else len(seq)


def scale_for(suite: str, values: pd.Series | None = None) -> float:
    """Display factor: 100 for percent suites unless the values already look like percents."""
    if suite not in PERCENT_SUITES:
        return 1.0
    if values is not None and len(values) and float(values.abs().max()) > 1.5:
        return 1.0
    return 100.0


# -------------------------------------------------------------------------------- building


def with_protocol(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with ``protocol`` and ``hparams`` columns (frames without them: fixed rows)."""
    out = cells
    if "protocol" not in out.columns:
        out = out.assign(protocol=FIXED)
    if "hparams" not in out.columns:
        out = out.assign(hparams="")
    return out.assign(protocol=out["protocol"].fillna(FIXED).replace("", FIXED).astype(str),
                      hparams=out["hparams"].fillna("").astype(str))


def fixed_only(cells: pd.DataFrame) -> pd.DataFrame:
    """The fixed-protocol rows of ``cells`` (what the paper comparison and the cost table read)."""
    cells = with_protocol(cells)
    return cells[cells["protocol"] == FIXED]


def headline(cells: pd.DataFrame, suite: str, column: str = "value") -> pd.DataFrame:
    """Per (method, init, anchor_init, protocol, task): the headline metric's ``column``, mean over
    the row's runs (every expert seed and FDA seed)."""
    cells = with_protocol(cells)
    df = cells[(cells["suite"] == suite) & cells["headline"]]
    for c in ("init", "anchor_init"):
        df = df.assign(**{c: df[c].fillna("").astype(str)})
    return df.groupby(ROW_KEY + ["task"], sort=False, dropna=False)[column].mean().reset_index()


def chosen_values(cells: pd.DataFrame, suite: str) -> dict[tuple, str]:
    """Per validated row (ROW_KEY): its chosen values for the label, 'α=0.2' (runs - expert seeds,
    FDA seeds - that chose differently: 'α=0.2/α=0.5', in seed order, each once)."""
    import json

    cells = with_protocol(cells)
    df = cells[(cells["suite"] == suite) & (cells["protocol"] != FIXED)]
    out = {}
    for key, g in df.groupby(ROW_KEY, sort=False):
        runs = [c for c in ("expert_seed", "seed") if c in g.columns]
        by_seed = g.drop_duplicates(runs).sort_values(runs)["hparams"]
        labels = [values_label(json.loads(h)) for h in by_seed if h]
        out[tuple(key)] = "/".join(dict.fromkeys(labels))
    return out


def anchor_sources(cells: pd.DataFrame, suite: str) -> dict[tuple[str, str, str], str]:
    """Per FDA row (method, init, anchor_init): where its anchors come from, from the cells'
    ``anchor_source`` (several sources of one row are joined with '+')."""
    if "anchor_source" not in cells.columns:
        return {}
    df = cells[(cells["suite"] == suite) & (cells["method"] == "fda")]
    return {tuple(k): "+".join(sorted(set(g["anchor_source"].astype(str)) - {""})) for k, g in df.groupby(KEY)}


def build_table(cells: pd.DataFrame, suite: str, tasks: Sequence[str] | None = None,
                column: str = "value") -> pd.DataFrame:
    """The paper-shaped table (unscaled values): index columns method/init/anchor_init/protocol/row,
    then one column per task, ``Avg`` (mean over the tasks) and ``Δ`` (FDA rows: Avg minus the Avg
    of the init's row of the same protocol, else the fixed one; NaN elsewhere or when the init's row
    is missing)."""
    long = headline(cells, suite, column)
    if tasks is None:
        tasks = list(dict.fromkeys(long["task"]))
    wide = long.pivot_table(index=ROW_KEY, columns="task", values=column, aggfunc="mean", sort=False)
    wide = wide.reindex(columns=list(tasks))
    wide[AVG] = wide[list(tasks)].mean(axis=1, skipna=False)
    wide = wide.reset_index()
    avg_of = {(m, i, a, p): v for m, i, a, p, v in wide[ROW_KEY + [AVG]].itertuples(index=False)}
    wide[DELTA] = [
        v - avg_of.get(init_row(i), math.nan) if m == "fda" else math.nan
        for m, i, v in wide[["method", "init", AVG]].itertuples(index=False)
    ]
    sources = anchor_sources(cells, suite)
    chosen = chosen_values(cells, suite)
    wide.insert(4, "row", [row_label(*k[:3], sources.get(tuple(k[:3]), ""), k[3], chosen.get(tuple(k), ""))
                           for k in wide[ROW_KEY].itertuples(index=False)])
    order = sorted(range(len(wide)), key=lambda j: _row_order(tuple(wide.loc[j, ROW_KEY])))
    out = wide.iloc[order].reset_index(drop=True)
    out.columns.name = None
    return out


def init_row(init: str) -> tuple[str, str, str, str]:
    """The row an FDA row's Δ compares with: its init's fixed row, whatever the FDA row's protocol.
    A validated FDA row starts from the same model as the fixed one (the init's fixed merge;
    fda.bench.config.fda_selection), so that row is its init."""
    return (init, "", "", FIXED)


def add_intervals(table: pd.DataFrame, ints: RowIntervals, *, normalized: bool = False) -> pd.DataFrame:
    """``table`` (from :func:`build_table`) with, per task and Avg, ``{col} lo`` / ``{col} hi``
    (95% interval, metric scale), ``Δ lo`` / ``Δ hi`` / ``Δ sig`` (paired interval of FDA minus
    its init; sig: it excludes 0) and ``seeds`` (the seeds behind the row, ``E×K``: E expert seeds
    × K FDA seeds per expert seed; empty without outcomes); NaN where a row has no per-example
    outcomes. See :mod:`fda.bench.report.intervals`."""
    out = table.copy()
    cols = [c for c in table.columns if c not in ROW_KEY + ["row", DELTA]]
    keys = [tuple(k) for k in table[ROW_KEY].itertuples(index=False)]
    for c in cols:
        got = [(ints.normalized(k, c) if normalized else ints.of(k, c)) for k in keys]
        out[f"{c} lo"] = [g.lo if g else math.nan for g in got]
        out[f"{c} hi"] = [g.hi if g else math.nan for g in got]
    deltas = []
    for m, i, a, p in keys:
        d = None
        if m == "fda" and not normalized:
            d = ints.paired_difference((m, i, a, p), init_row(i), AVG)
        deltas.append(d)
    out[f"{DELTA} lo"] = [d.lo if d else math.nan for d in deltas]
    out[f"{DELTA} hi"] = [d.hi if d else math.nan for d in deltas]
    out[f"{DELTA} sig"] = [d.excludes_zero() if d else False for d in deltas]
    out["seeds"] = [str(ints.n_seeds[k]) if k in ints.n_seeds else "" for k in keys]
    return out


def paper_rows(suite: str, path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's published numbers for ``suite`` (package data ``fda/bench/report/data/paper_tables.csv``,
    :mod:`fda.bench.report.published`): columns suite, source, row, method, init, anchor_init, task,
    value (as printed; task ``avg`` = printed Avg), flag (why a printed cell is suspect, or '')."""
    df = published.paper_data(path)
    return df[df["suite"] == suite].reset_index(drop=True)


def paper_table(suite: str, tasks: Sequence[str], path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's rows in the shape of :func:`build_table` (Avg as printed; Δ recomputed from
    the printed Avg of the init's row, as the paper does), in our table's unit
    (:data:`~fda.bench.report.published.PAPER_FACTOR`); ``flag``: the row's flagged cells, 'task: why'.
    Empty if the paper has no table."""
    rows = paper_rows(suite, path)
    if rows.empty:
        return pd.DataFrame(columns=KEY + ["row"] + list(tasks) + [AVG, DELTA, "flag"])
    rows = rows.assign(task=rows["task"].replace({"avg": AVG}),
                       value=rows["value"] * published.PAPER_FACTOR.get(suite, 1.0))
    wide = rows.pivot_table(index=KEY + ["row"], columns="task", values="value", aggfunc="first", sort=False)
    wide = wide.reindex(columns=list(tasks) + [AVG]).reset_index()
    avg_of = {(m, i, a): v for m, i, a, v in wide[KEY + [AVG]].itertuples(index=False)}
    wide[DELTA] = [v - avg_of.get((i, "", ""), math.nan) if m == "fda" else math.nan
                   for m, i, v in wide[["method", "init", AVG]].itertuples(index=False)]
    flags: dict[tuple, list[str]] = {}
    for (m, i, a, t), why in published.cell_flags(rows).items():
        flags.setdefault((m, i, a), []).append(f"{t}: {why}")
    wide["flag"] = ["; ".join(flags.get(tuple(k), [])) for k in wide[KEY].itertuples(index=False)]
    order = sorted(range(len(wide)), key=lambda j: _row_order(tuple(wide.loc[j, KEY])))
    out = wide.iloc[order].reset_index(drop=True)
    out.columns.name = None
    return out


def compare_with_paper(ours: pd.DataFrame, paper: pd.DataFrame, tasks: Sequence[str], scale: float) -> pd.DataFrame:
    """Ours (times ``scale``, the paper's unit) and the paper's value side by side:
    columns ``{col} ours`` and ``{col} paper`` for every task, Avg and Δ, and ``flag`` (the paper's
    suspect cells); rows of both tables, labelled as ours where we have a label, else as printed."""
    cols = list(tasks) + [AVG, DELTA]
    left = ours.set_index(KEY)[cols] * scale
    right = paper.set_index(KEY)[cols]
    keys = list(dict.fromkeys(list(left.index) + list(right.index)))
    keys.sort(key=_row_order)
    paper_labels = {tuple(k): r for *k, r in paper[KEY + ["row"]].itertuples(index=False)}
    ours_labels = {tuple(k): r for *k, r in ours[KEY + ["row"]].itertuples(index=False)} if "row" in ours else {}
    labels = [ours_labels.get(k) or (row_label(*k) if _has_label(k) or k not in paper_labels else paper_labels[k]) for k in keys]
    out = pd.DataFrame({"method": [k[0] for k in keys], "init": [k[1] for k in keys],
                        "anchor_init": [k[2] for k in keys], "row": labels})
    for c in cols:
        out[f"{c} ours"] = [left[c].get(k, math.nan) if k in left.index else math.nan for k in keys]
        out[f"{c} paper"] = [right[c].get(k, math.nan) if k in right.index else math.nan for k in keys]
    flags = dict(zip(map(tuple, paper[KEY].itertuples(index=False)), paper.get("flag", pd.Series(dtype=str))))
    out["flag"] = [flags.get(k, "") for k in keys]
    return out


def _has_label(key: tuple[str, str, str]) -> bool:
    method, init, anchor = key
    return method in METHOD_LABELS or (method == "fda" and init in INIT_LABELS and anchor in ANCHOR_LABELS)


def with_published_elsewhere(both: pd.DataFrame, peers: pd.DataFrame) -> pd.DataFrame:
    """``both`` (from :func:`compare_with_paper`) with other papers' averages
    (:func:`~fda.bench.report.published.peer_rows`) appended: method ``published``, ``Avg paper``
    the published value, ``family`` the experts' checkpoint family, ``source`` where it is printed."""
    out = both.assign(family="", source="")
    extra = pd.DataFrame({"method": "published", "init": "", "anchor_init": "", "row": peers["row"],
                          "Avg paper": peers["Avg"], "flag": "", "family": peers["family"], "source": peers["source"]})
    return pd.concat([out, extra.reindex(columns=out.columns)], ignore_index=True) if len(extra) else out


def mark_paper_body(both: pd.DataFrame, header: list[str], body: list[list[str]],
                    flags: dict[tuple[str, str, str, str], str], tex: bool = False) -> tuple[list[list[str]], list[str]]:
    """Rendered rows of :func:`with_published_elsewhere`'s table, finished: the paper's flagged cells
    (``flags``, :func:`~fda.bench.report.published.cell_flags`) marked, with their footnotes;
    published-elsewhere rows after a label row, Avg only, and a footnote naming their sources."""
    mark = r"$^\dagger$" if tex else published.FLAG_MARK
    body, notes, peers = [list(r) for r in body], [], []
    for j, r in enumerate(both.to_dict("records")):
        if r.get("family"):
            avg = r[f"{AVG} paper"]
            body[j] = [f"{r['row']} [{r['family']}]"] + [
                f"{avg:.{max(1, published.printed_decimals(avg))}f}" if h == AVG else "" for h in header[1:]]
            peers.append(j)
            continue
        for k, col in enumerate(header[1:], start=1):
            why = flags.get((r["method"], r["init"], r["anchor_init"], published.AVG_TASK if col == AVG else col))
            if why:
                body[j][k] += mark
                notes.append(f"{mark} {r['row']}, {col} (paper): {why}")
    if peers:
        body.insert(peers[0], ["Published elsewhere (other papers, other expert checkpoints; Avg only):"] + [""] * (len(header) - 1))
        sources = ", ".join(dict.fromkeys(published.short_source(both["source"].iloc[j]) for j in peers))
        notes.append(f"Published elsewhere: averages over the same tasks from other papers, with the expert checkpoints "
                     f"in brackets (not the paper's experts, so not comparable cell by cell). Sources: {sources}.")
    return body, notes


# -------------------------------------------------------------------------------- rendering


def _fmt(v: float, decimals: int, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.{decimals}f}" if signed else f"{v:.{decimals}f}"


def _with_interval(r: pd.Series, c: str, scale: float, decimals: int) -> str:
    """'v ±h' (h: half the 95% interval's width) when the row has an interval for ``c``; Δ gets a
    '*' when its paired interval excludes 0."""
    text = _fmt(r[c] * scale, decimals, signed=c == DELTA)
    lo, hi = r.get(f"{c} lo", math.nan), r.get(f"{c} hi", math.nan)
    if isinstance(lo, float) and not math.isnan(lo) and not math.isnan(r[c]):
        text += f" ±{(hi - lo) * scale / 2:.{decimals}f}"
        if c == DELTA and bool(r.get(f"{DELTA} sig", False)):
            text += "*"
    return text


def render_rows(table: pd.DataFrame, scale: float, decimals: int, *, pair_with_paper: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and string rows for Markdown/LaTeX. With ``pair_with_paper`` cells read 'ours / paper'.
    Interval columns (:func:`add_intervals`) are shown as '±' beside their value."""
    if pair_with_paper:
        cols = [c[: -len(" ours")] for c in table.columns if c.endswith(" ours")]
        body = []
        for _, r in table.iterrows():
            cells = [r["row"]]
            for c in cols:
                signed = c == DELTA
                cells.append(f"{_fmt(r[f'{c} ours'], decimals, signed)} / {_fmt(r[f'{c} paper'], decimals, signed)}")
            body.append(cells)
        return ["Method"] + cols, body
    cols = [c for c in table.columns if c not in ROW_KEY + ["row", "seeds"] and not c.endswith((" lo", " hi", " sig"))]
    body = [[r["row"]] + [_with_interval(r, c, scale, decimals) for c in cols] for _, r in table.iterrows()]
    return ["Method"] + cols, body


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "Δ": r"$\Delta$", "–": "--"}


def _tex(s: str) -> str:
    for a, b in _LATEX_ESCAPES.items():
        s = s.replace(a, b)
    return s


def to_latex(header: list[str], body: list[list[str]], caption: str = "") -> str:
    """A booktabs tabular (needs ``\\usepackage{booktabs}``)."""
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.insert(0, f"% {caption}")
    return "\n".join(lines) + "\n"


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_frame(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")


def table_paths(out_dir: str | os.PathLike, suite: str) -> dict[str, Path]:
    """The files :func:`write_tables` writes for ``suite``."""
    d = Path(out_dir)
    out = {}
    for kind in ("absolute", "normalized", "paper"):
        stem = suite if kind == "absolute" else f"{suite}-{kind}"
        for ext in ("csv", "md", "tex"):
            out[f"{kind}.{ext}"] = d / f"{stem}.{ext}"
    return out


def fixed_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The fixed-protocol rows of a built table (the paper's rows are fixed: they compare with these)."""
    return table[table["protocol"] == FIXED].reset_index(drop=True) if "protocol" in table else table


def protocol_note(table: pd.DataFrame) -> str:
    """The Markdown line that says what a validated row is (empty when the table has none)."""
    if "protocol" not in table or (table["protocol"] == FIXED).all():
        return ""
    return ("Rows without a protocol use the config's values (fixed protocol, the paper's rows); \"(validated, α=…)\" rows "
            "use the values chosen on the validation split from the suite's declared grid (first best in declared "
            "order), reported on test (docs/selection.md).\n\n")


def interval_note(ints: RowIntervals | None) -> str:
    """The Markdown line that says what '±' and '*' mean in a table (empty without intervals)."""
    if ints is None:
        return "No per-example outcomes: values are means over seeds, without intervals.\n\n"
    experts = sorted({c.expert for c in ints.n_seeds.values()})
    fda = sorted({c.fda for k, c in ints.n_seeds.items() if k[0] == "fda"} or {c.fda for c in ints.n_seeds.values()})
    one = " (one seed: test examples only)" if experts == [1] and fda == [1] else ""
    return (f"Values are means over expert seeds and FDA seeds. ± = half the width of the 95% bootstrap interval "
            f"over test examples, expert seeds and FDA seeds{one}; "
            f"Δ* = the paired interval of FDA minus its init excludes 0 (paired by test example and expert seed; "
            f"docs/statistics.md). Expert seeds per row: {', '.join(map(str, experts))}; FDA seeds per expert seed "
            f"(FDA rows): {', '.join(map(str, fda))}; `seeds` = expert × FDA seeds.\n\n")


def write_tables(cells: pd.DataFrame, suite: str, tasks: Sequence[str], out_dir: str | os.PathLike,
                 paper_csv: str | os.PathLike | None = None,
                 outcomes: Mapping[OutcomeKey, Outcome] | None = None) -> dict[str, Path]:
    """Write the absolute, normalised and ours-vs-paper tables of ``suite`` (CSV, Markdown, LaTeX).
    With ``outcomes`` (per-example results of the cells' evaluations) the absolute and normalised
    tables carry 95% intervals and Δ its paired interval."""
    paths = table_paths(out_dir, suite)
    ints = row_intervals(outcomes, tasks) if outcomes else None
    absolute = build_table(cells, suite, tasks, "value")
    if ints is not None:
        absolute = add_intervals(absolute, ints)
    scale = scale_for(suite, cells.loc[cells["suite"] == suite, "value"])
    decimals = 2 if scale == 100.0 or suite in PERCENT_SUITES else 4
    unit = "percent" if suite in PERCENT_SUITES else "metric scale 0-1"
    _write_frame(absolute, paths["absolute.csv"])
    h, b = render_rows(absolute, scale, decimals)
    _write_text(f"### {suite}: absolute ({unit}; Δ = Avg minus the init's Avg)\n\n" + interval_note(ints)
                + protocol_note(absolute) + to_markdown(h, b),
                paths["absolute.md"])
    _write_text(to_latex(h, b, f"{suite}: absolute ({unit})"), paths["absolute.tex"])

    normalized = build_table(cells, suite, tasks, "normalized")
    if ints is not None:
        normalized = add_intervals(normalized, ints, normalized=True)
    _write_frame(normalized, paths["normalized.csv"])
    h, b = render_rows(normalized, 100.0, 2)
    _write_text(f"### {suite}: normalised (merged / individual expert, percent)\n\n" + interval_note(ints)
                + protocol_note(normalized) + to_markdown(h, b),
                paths["normalized.md"])
    _write_text(to_latex(h, b, f"{suite}: normalised (percent of the individual expert)"), paths["normalized.tex"])

    paper = paper_table(suite, tasks, paper_csv)
    peers = published.peer_rows(suite)
    if paper.empty and peers.empty:
        note = f"No published numbers for {suite} in paper_tables.csv.\n"
        _write_frame(with_published_elsewhere(compare_with_paper(fixed_rows(absolute), paper, tasks, scale), peers).iloc[0:0],
                     paths["paper.csv"])
        _write_text(f"### {suite}: ours / paper\n\n{note}", paths["paper.md"])
        _write_text(f"% {note}", paths["paper.tex"])
        return paths
    both = with_published_elsewhere(compare_with_paper(fixed_rows(absolute), paper, tasks, scale), peers)
    _write_frame(both, paths["paper.csv"])
    source = published.main_source(paper_rows(suite, paper_csv))
    if suite in published.PAPER_FACTOR:
        source += f"; printed values x {published.PAPER_FACTOR[suite]:g}"
    h, b = render_rows(both, 1.0, decimals, pair_with_paper=True)
    flags = published.cell_flags(paper_rows(suite, paper_csv))
    md, notes = mark_paper_body(both, h, b, flags)
    _write_text(f"### {suite}: ours / paper ({source}; – = not run or not published)\n\n" + to_markdown(h, md)
                + "".join(f"\n{n}\n" for n in notes), paths["paper.md"])
    tex, notes = mark_paper_body(both, h, b, flags, tex=True)
    _write_text(to_latex(h, tex, f"{suite}: ours / paper ({source})") + "".join(f"\\par{{\\footnotesize {_tex(n)}}}\n" for n in notes),
                paths["paper.tex"])
    return paths
