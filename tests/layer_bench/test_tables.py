"""Result cells, paper-shaped tables and figures on synthetic cells with hand-computed numbers."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from fda.bench.report import results, tables

TASKS = ["a", "b"]
# value per (method, init, anchor_init) and task; the individual experts score 0.8 and 0.5
VALUES = {
    ("pretrained", "", ""): {"a": 0.4, "b": 0.2},
    ("individual", "", ""): {"a": 0.8, "b": 0.5},
    ("ta", "", ""): {"a": 0.6, "b": 0.3},
    ("fda", "ta", "gauss"): {"a": 0.7, "b": 0.4},
    ("fda", "pretrained", "weight"): {"a": 0.64, "b": 0.45},
}


def _raw_rows(key, seed=0, shift=0.0, values=None):
    method, init, ai = key
    values = values or VALUES[key]
    rows = []
    for t in TASKS:
        rows.append({"task": t, "metric": "accuracy", "value": values[t] + shift})
        rows.append({"task": t, "metric": "loss", "value": 1.0})  # a second, non-headline metric
    return results.raw_frame(rows, method=method, init=init, anchor_init=ai, seed=seed)


def _cells(suite="minitext") -> pd.DataFrame:
    individual = _raw_rows(("individual", "", ""))
    frames = []
    for key in VALUES:
        frames.append(results.build_cell([_raw_rows(key)], individual, suite=suite, expert_source="finetuned-here",
                                         config_hash="abc123", version="0.0.0"))
    return pd.concat(frames, ignore_index=True)


def test_raw_frame_marks_the_first_metric_per_task_as_headline():
    df = _raw_rows(("ta", "", ""))
    assert df.loc[df["metric"] == "accuracy", "headline"].all()
    assert not df.loc[df["metric"] == "loss", "headline"].any()


def test_cell_columns_normalized_and_provenance():
    individual = _raw_rows(("individual", "", ""))
    cell = results.build_cell([_raw_rows(("ta", "", ""))], individual, suite="minitext",
                              expert_source="finetuned-here", config_hash="abc123", version="9.9")
    assert list(cell.columns) == results.CELL_COLUMNS
    acc = cell[cell["metric"] == "accuracy"].set_index("task")["normalized"]
    assert acc["a"] == pytest.approx(0.6 / 0.8) and acc["b"] == pytest.approx(0.3 / 0.5)
    assert set(cell["expert_source"]) == {"finetuned-here"} and set(cell["fda_bench_version"]) == {"9.9"}
    assert list(cell["task"]) == sorted(cell["task"])


def test_normalized_is_nan_without_a_usable_expert_value():
    individual = results.raw_frame([{"task": "a", "metric": "accuracy", "value": 0.0}], method="individual")
    df = results.raw_frame([{"task": "a", "metric": "accuracy", "value": 0.5},
                            {"task": "b", "metric": "accuracy", "value": 0.5}], method="ta")
    norm = results.normalize(df, individual)
    assert math.isnan(norm[0]) and math.isnan(norm[1])


def test_cell_bytes_are_deterministic(tmp_path):
    individual = _raw_rows(("individual", "", ""))
    raws = [_raw_rows(("fda", "ta", ai), seed=s, shift=0.01 * s, values=VALUES[("fda", "ta", "gauss")])
            for ai in ("gauss", "weight") for s in (0, 1)]
    a = results.build_cell(raws, individual, suite="minitext", expert_source="x", config_hash="h", version="1")
    shuffled = [r.sample(frac=1.0, random_state=3) for r in raws]
    random.Random(0).shuffle(shuffled)
    b = results.build_cell(shuffled, individual, suite="minitext", expert_source="x", config_hash="h", version="1")
    results.write_cell(a, tmp_path / "a.csv")
    results.write_cell(b, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    text = (tmp_path / "a.csv").read_text()
    assert text.startswith(",".join(results.CELL_COLUMNS) + "\n") and "\r" not in text
    back = results.read_cells([tmp_path / "a.csv"])
    assert len(back) == 2 * 2 * 2 * 2 and back["headline"].dtype == bool
    assert set(back["seed"]) == {0, 1} and set(back["init"]) == {"ta"}


def test_duplicate_rows_are_an_error():
    individual = _raw_rows(("individual", "", ""))
    raw = _raw_rows(("ta", "", ""))
    with pytest.raises(results.CellError, match="duplicate"):
        results.build_cell([raw, raw], individual, suite="s", expert_source="x", config_hash="h", version="1")


def test_table_rows_order_avg_and_delta():
    t = tables.build_table(_cells(), "minitext", TASKS)
    assert list(t["row"]) == ["Pretrained", "Individual", "TA", "FDA (Pretrained, Weight)", "FDA (TA, Gauss)"]
    assert list(t.columns) == ["method", "init", "anchor_init", "protocol", "row", "a", "b", "Avg", "Δ"]
    row = t.set_index("row")
    assert row.loc["TA", "Avg"] == pytest.approx(0.45)
    assert row.loc["FDA (TA, Gauss)", "Avg"] == pytest.approx(0.55)
    assert row.loc["FDA (TA, Gauss)", "Δ"] == pytest.approx(0.55 - 0.45)            # against TA
    assert row.loc["FDA (Pretrained, Weight)", "Δ"] == pytest.approx(0.545 - 0.30)  # against Pretrained
    assert math.isnan(row.loc["TA", "Δ"])


def test_iso_rows_are_labelled_and_ordered_after_the_papers_baselines():
    extra = {("isocts", "", ""): {"a": 0.66, "b": 0.36}, ("isoc", "", ""): {"a": 0.62, "b": 0.34},
             ("fda", "isocts", "weight"): {"a": 0.7, "b": 0.5}, ("fda", "wudi", "gauss"): {"a": 0.5, "b": 0.5}}
    individual = _raw_rows(("individual", "", ""))
    cells = pd.concat([_cells()] + [results.build_cell([_raw_rows(k, values=v)], individual, suite="minitext",
                                                       expert_source="finetuned-here", config_hash="abc123", version="0.0.0")
                                    for k, v in extra.items()], ignore_index=True)
    t = tables.build_table(cells, "minitext", TASKS)
    assert list(t["row"]) == ["Pretrained", "Individual", "TA", "Iso-C", "Iso-CTS", "FDA (Pretrained, Weight)",
                              "FDA (TA, Gauss)", "FDA (WUDI, Gauss)", "FDA (Iso-CTS, Weight)"]
    assert t.set_index("row").loc["FDA (Iso-CTS, Weight)", "Δ"] == pytest.approx(0.6 - 0.51)  # against Iso-CTS
    assert tables.row_label("isoc") == "Iso-C" and tables.row_label("fda", "isoc", "gauss") == "FDA (Iso-C, Gauss)"


def test_normalized_table():
    t = tables.build_table(_cells(), "minitext", TASKS, "normalized").set_index("row")
    assert t.loc["Individual", "Avg"] == pytest.approx(1.0)
    assert t.loc["TA", "a"] == pytest.approx(0.75) and t.loc["TA", "b"] == pytest.approx(0.6)
    assert t.loc["TA", "Avg"] == pytest.approx(0.675)
    assert t.loc["FDA (TA, Gauss)", "Δ"] == pytest.approx((0.875 + 0.8) / 2 - 0.675)


def test_seeds_are_averaged():
    individual = _raw_rows(("individual", "", ""))
    cell = results.build_cell([_raw_rows(("fda", "ta", "gauss"), seed=s, shift=0.1 * s) for s in (0, 1)], individual,
                              suite="minitext", expert_source="x", config_hash="h", version="1")
    t = tables.build_table(cell, "minitext", TASKS).set_index("row")
    assert t.loc["FDA (TA, Gauss)", "a"] == pytest.approx(0.75)


def _paper_csv(tmp_path):
    rows = [("TA", "ta", "", "", {"a": 61.0, "b": 29.0, "avg": 45.0}),
            ("FDA (TA, Gauss)", "fda", "ta", "gauss", {"a": 72.0, "b": 40.0, "avg": 56.0}),
            ("RegMean", "regmean", "", "", {"a": 70.0, "b": 35.0, "avg": 52.5})]
    lines = ["suite,source,row,method,init,anchor_init,task,value"]
    for label, m, i, ai, vals in rows:
        lines += [f'vitb16,test page,"{label}",{m},{i},{ai},{t},{v}' for t, v in vals.items()]
    path = tmp_path / "paper.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_paper_side_by_side(tmp_path):
    cells = _cells("vitb16")
    ours = tables.build_table(cells, "vitb16", TASKS)
    paper = tables.paper_table("vitb16", TASKS, _paper_csv(tmp_path))
    both = tables.compare_with_paper(ours, paper, TASKS, scale=100.0).set_index("row")
    assert both.loc["TA", "a ours"] == pytest.approx(60.0) and both.loc["TA", "a paper"] == 61.0
    assert both.loc["TA", "Avg paper"] == 45.0
    assert both.loc["FDA (TA, Gauss)", "Δ paper"] == pytest.approx(56.0 - 45.0)
    assert both.loc["FDA (TA, Gauss)", "Δ ours"] == pytest.approx(10.0)
    assert math.isnan(both.loc["RegMean", "Avg ours"]) and both.loc["RegMean", "Avg paper"] == 52.5
    assert math.isnan(both.loc["Pretrained", "a paper"])
    assert list(both.index)[-1] == "FDA (TA, Gauss)"  # FDA rows last, paper-only rows before them


def test_packaged_paper_numbers():
    rows = tables.paper_rows("vitb16")
    wudi = rows[(rows["method"] == "fda") & (rows["init"] == "wudi") & (rows["anchor_init"] == "gauss")]
    assert float(wudi.loc[wudi["task"] == "avg", "value"].iloc[0]) == 89.23
    assert set(tables.paper_rows("robertal")["task"]) >= {"CoLA", "STS-B", "avg"}
    assert tables.paper_rows("minitext").empty


def test_write_tables_files_and_formats(tmp_path):
    cells = _cells("vitb16")
    paths = tables.write_tables(cells, "vitb16", TASKS, tmp_path, paper_csv=_paper_csv(tmp_path))
    assert set(paths) == {f"{k}.{e}" for k in ("absolute", "normalized", "paper") for e in ("csv", "md", "tex")}
    md = paths["absolute.md"].read_text()
    assert "| FDA (TA, Gauss) | 70.00 | 40.00 | 55.00 | +10.00 |" in md
    assert "| Method | a | b | Avg | Δ |" in md
    assert "| TA | 75.00 | 60.00 | 67.50 | – |" in paths["normalized.md"].read_text()
    pmd = paths["paper.md"].read_text()
    assert "| TA | 60.00 / 61.00 | 30.00 / 29.00 | 45.00 / 45.00 | – / – |" in pmd
    assert "RegMean" in pmd
    tex = paths["absolute.tex"].read_text()
    assert r"\toprule" in tex and r"$\Delta$" in tex and "FDA (TA, Gauss) & 70.00" in tex
    again = tables.write_tables(cells, "vitb16", TASKS, tmp_path / "2", paper_csv=_paper_csv(tmp_path))
    for k, p in paths.items():
        assert p.read_bytes() == again[k].read_bytes(), k


def test_suite_without_paper_numbers(tmp_path):
    paths = tables.write_tables(_cells(), "minitext", TASKS, tmp_path)
    assert "No published numbers" in paths["paper.md"].read_text()
    assert "| TA | 60.00 | 30.00 | 45.00 | – |" in paths["absolute.md"].read_text()  # embedded suites in percent


def test_glue_suites_keep_the_metric_scale(tmp_path):
    paths = tables.write_tables(_cells("robertal"), "robertal", TASKS, tmp_path, paper_csv=_paper_csv(tmp_path))
    assert "| TA | 0.6000 | 0.3000 | 0.4500 | – |" in paths["absolute.md"].read_text()


def test_figures_without_any_normalized_value(tmp_path):
    """Experts that score 0 everywhere (tiny smoke runs) leave `normalized` empty: rows stay, as NaN."""
    from fda.bench.report import figures

    zero = {"a": 0.0, "b": 0.0}
    individual = _raw_rows(("individual", "", ""), values=zero)
    cells = pd.concat([results.build_cell([_raw_rows(key, values=zero)], individual, suite="minitext", expert_source="local",
                                          config_hash="abc123", version="0.0.0") for key in VALUES], ignore_index=True)
    assert cells.loc[cells["headline"], "normalized"].isna().all()  # the tables read headline metrics
    out = figures.write_cell_figures(cells, "minitext", TASKS, tmp_path)
    assert all(p.stat().st_size > 1000 for p in out)
    table = figures._normalized_table(cells, "minitext", TASKS, tables.build_table(cells, "minitext", TASKS))
    assert list(table["row"]) == list(tables.build_table(cells, "minitext", TASKS)["row"]) and table["Avg"].isna().all()


def test_figures(tmp_path):
    from fda.bench.report import figures

    cells = _cells()
    out = figures.write_cell_figures(cells, "minitext", TASKS, tmp_path)
    assert sorted(p.name for p in out) == sorted(p.name for p in figures.cell_figure_paths(tmp_path, "minitext"))
    logs = []
    for block in (0, 1):
        for task in TASKS:
            logs.append({"suite": "minitext", "block": block, "task": task, "anchor_init": "gauss",
                         "steps": [0, 1, 2], "loss": [3.0, 2.0, 1.5], "cos_mean": [0.1, 0.5, 0.7],
                         "cos": {}, "sv_steps": [0, 2], "singular_values": [[1.0, 0.5, 0.25], [1.0, 0.2, 0.01]]})
    log_paths = []
    for i, log in enumerate(logs):
        p = tmp_path / f"log{i}.json"
        p.write_text(__import__("json").dumps(log))
        log_paths.append(p)
    out = figures.write_construction_figures("minitext", "gauss", log_paths, tmp_path)
    assert sorted(p.name for p in out) == sorted(p.name for p in figures.construction_figure_paths(tmp_path, "minitext", "gauss"))
    for p in out:
        assert p.stat().st_size > 1000
    # same inputs, same bytes (no timestamps in PNG or PDF)
    again = figures.write_construction_figures("minitext", "gauss", log_paths, tmp_path / "again")
    assert [p.read_bytes() for p in out] == [p.read_bytes() for p in again]


def test_lbfgs_construction_logs_are_drawn_best_so_far():
    from fda.bench.report import figures

    # line-search trial points are not steps: an L-BFGS curve shows what a run of each length returns
    log = {"block": 0, "optimizer": "lbfgs", "loss": [5.0, 7.0, 3.0, 4.0], "cos_mean": [0.1, 0.0, 0.4, 0.3], "steps": [0, 1, 2, 3]}
    best = figures._best_so_far(log)
    assert best["loss"] == [5.0, 5.0, 3.0, 3.0] and best["cos_mean"] == [0.1, 0.1, 0.4, 0.4]
    fig = figures.construction_curves([log], "t")
    assert fig.axes[0].get_xlabel().startswith("objective evaluation")
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.1, 0.1, 0.4, 0.4]
    adamw = figures.construction_curves([{**log, "optimizer": "adamw"}], "t")
    assert adamw.axes[0].get_xlabel() == "construction step" and list(adamw.axes[1].lines[0].get_ydata()) == [0.1, 0.0, 0.4, 0.3]


def test_every_configurable_name_has_a_row_label():
    """A method, init, anchor init or anchor source added to the vocabulary gets a label, not its raw name."""
    from fda.bench.config.vocabulary import ANCHOR_INITS, ANCHOR_SOURCES, FDA_INITS, METHODS

    assert set(tables.METHOD_LABELS) == set(METHODS)
    assert set(tables.INIT_LABELS) == set(FDA_INITS) and set(tables.ANCHOR_LABELS) == set(ANCHOR_INITS)
    assert set(tables.ANCHOR_SOURCE_LABELS) == set(ANCHOR_SOURCES)


def test_official_anchor_rows_are_labelled_and_recorded():
    """FDA rows adapted from the authors' released anchors say so in the cell (anchor_source) and
    in every table's row label; other rows carry no anchor source; old cells read as constructed."""
    individual = _raw_rows(("individual", "", ""))
    fda = results.build_cell([_raw_rows(("fda", "ta", "gauss"))], individual, suite="minitext",
                             expert_source="finetuned-here", config_hash="h", version="0", anchor_source="official")
    base = results.build_cell([_raw_rows(("ta", "", ""))], individual, suite="minitext",
                              expert_source="finetuned-here", config_hash="h", version="0", anchor_source="official")
    assert set(fda["anchor_source"]) == {"official"} and set(base["anchor_source"]) == {""}
    cells = pd.concat([fda, base], ignore_index=True)
    t = tables.build_table(cells, "minitext", TASKS)
    assert dict(zip(t["method"], t["row"])) == {"ta": "TA", "fda": "FDA (TA, Gauss, official anchors)"}
    assert tables.row_label("fda", "ta", "gauss") == "FDA (TA, Gauss)"
    assert tables.row_label("fda", "ta", "gauss", "constructed") == "FDA (TA, Gauss)"
    paper = pd.DataFrame({"method": ["fda"], "init": ["ta"], "anchor_init": ["gauss"], "row": ["FDA (TA, Gauss)"],
                          "a": [70.0], "b": [40.0], "Avg": [55.0], "Δ": [5.0]})
    both = tables.compare_with_paper(t, paper, TASKS, 100.0)
    assert "FDA (TA, Gauss, official anchors)" in set(both["row"])  # ours, next to the paper's row


def test_cells_without_the_anchor_source_column_read_as_constructed(tmp_path):
    individual = _raw_rows(("individual", "", ""))
    cell = results.build_cell([_raw_rows(("fda", "ta", "gauss")), _raw_rows(("ta", "", ""))], individual,
                              suite="minitext", expert_source="finetuned-here", config_hash="h", version="0")
    assert set(cell.loc[cell["method"] == "fda", "anchor_source"]) == {"constructed"}
    cell.drop(columns=["anchor_source"]).to_csv(tmp_path / "old.csv", index=False)
    back = results.read_cells([tmp_path / "old.csv"])
    assert list(back.columns) == results.CELL_COLUMNS
    assert dict(zip(back["method"], back["anchor_source"])) == {"fda": "constructed", "ta": ""}
