"""The paper's published numbers and other papers' averages: package data, checks, and how the
``-paper`` tables and ``fda-bench paper-tables`` show them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fda.bench import cli
from fda.bench.report import published, results, tables

VISION = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
GLUE = ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE"]
LLM = ["GSM8K", "MATH", "HumanEval", "MBPP"]  # our column order (math, then code)
SUITE_TASKS = {"vitb32": VISION, "vitb16": VISION, "vitl14": VISION, "robertab": GLUE, "robertal": GLUE, "llama13b": LLM}
ABLATIONS = {"vitb32_ablation_init", "vitb32_ablation_dist", "robertab_ablation_dist", "robertab_ablation_tokennum"}
DOC = Path(__file__).resolve().parents[2] / "docs" / "paper-ablations.md"


def _cells(suite: str, tasks: list[str], keys: list[tuple[str, str, str]]) -> pd.DataFrame:
    """One seed per row key, every task at 0.5; the individual experts at 0.9."""
    def raw(key, v):
        return results.raw_frame([{"task": t, "metric": "accuracy", "value": v} for t in tasks],
                                 method=key[0], init=key[1], anchor_init=key[2], seed=0)

    individual = raw(("individual", "", ""), 0.9)
    return pd.concat([results.build_cell([raw(k, 0.9 if k[0] == "individual" else 0.5)], individual, suite=suite,
                                         expert_source="x", config_hash="h", version="0")
                      for k in keys], ignore_index=True)


def test_every_table_of_the_paper_is_packaged():
    df = published.paper_data()
    assert set(df["suite"]) == set(SUITE_TASKS) | ABLATIONS
    assert list(df.columns) == ["suite", "source", "row", "method", "init", "anchor_init", "task", "value", "flag"]
    assert df["value"].notna().all() and (df["source"] != "").all()
    for suite, tasks in SUITE_TASKS.items():
        rows = tables.paper_rows(suite)
        assert set(rows["task"]) == set(tasks) | {"avg"}, suite
        assert {("individual", "", ""), ("ta", "", ""), ("fda", "ta", "gauss"), ("fda", "ta", "weight")} <= set(
            map(tuple, rows[tables.KEY].itertuples(index=False))), suite
    assert len(df[df["suite"] == "vitb32_ablation_init"]) == 5 and len(df[df["suite"] == "robertab_ablation_tokennum"]) == 51


def test_the_suspect_vitb32_cell_is_flagged_and_kept_as_printed():
    rows = tables.paper_rows("vitb32")
    cell = rows[(rows["row"] == "FDA (TSV, Gauss)") & (rows["task"] == "EuroSAT")].iloc[0]
    assert cell["value"] == 91.19 and "suspect" in cell["flag"] and "97.19" in cell["flag"]
    assert "CAUTION" in cell["source"]  # the reference's source note carries over
    avg = rows[(rows["row"] == "FDA (TSV, Gauss)") & (rows["task"] == "avg")].iloc[0]
    assert avg["value"] == 85.55 and avg["flag"]


def test_every_printed_avg_off_by_more_than_rounding_carries_a_flag():
    df = published.paper_data()
    off = {(s, r) for s, r in published.check_averages(df)[["suite", "row"]].itertuples(index=False)}
    flagged = {(s, r) for s, r in df.loc[(df["task"] == "avg") & (df["flag"] != ""), ["suite", "row"]].itertuples(index=False)}
    assert off == flagged == {("vitb32", "FDA (TSV, Gauss)"), ("robertal", "TA"),
                              ("robertab_ablation_tokennum", "token_num=5 (w/o STS-B)")}


def test_check_averages_allows_rounding_only():
    def frame(values, avg):
        return pd.DataFrame({"suite": "s", "row": "r", "task": [f"t{i}" for i in range(len(values))] + ["avg"],
                             "value": list(values) + [avg]})

    assert published.check_averages(frame([63.8, 64.6], 64.2)).empty
    assert published.check_averages(frame([63.81, 64.62], 64.22)).empty          # 64.215 printed as 64.22
    assert published.check_averages(frame([0.6335, 0.9001], 0.7668)).empty       # 0.7668 exactly
    assert len(published.check_averages(frame([0.6335, 0.9001], 0.7670))) == 1  # two units off


def test_llama_rows_map_to_our_keys_and_unit():
    paper = tables.paper_table("llama13b", LLM)
    row = paper.set_index(tables.KEY).loc[("fda", "ta", "gauss")]
    assert row["GSM8K"] == pytest.approx(60.0) and row[tables.AVG] == pytest.approx(23.1)  # Table 3 prints 0.600
    assert row[tables.DELTA] == pytest.approx(23.1 - 20.9)
    both = tables.compare_with_paper(tables.build_table(_cells("llama13b", LLM, [("ta", "", "")]), "llama13b", LLM),
                                     paper, LLM, scale=100.0)
    assert list(both["row"]) == ["Individual", "TA", "FDA (TA, Gauss)", "FDA (TA, Weight)"]  # 'FDAs (TA, G)' -> ours
    assert both.set_index("row").loc["TA", "Avg ours"] == pytest.approx(50.0)


def test_paper_tables_show_flags_peers_and_the_papers_names(tmp_path):
    keys = [("pretrained", "", ""), ("individual", "", ""), ("tsvm", "", ""), ("fda", "tsvm", "gauss")]
    paths = tables.write_tables(_cells("vitb32", VISION, keys), "vitb32", VISION, tmp_path)
    md, tex = paths["paper.md"].read_text(), paths["paper.tex"].read_text()
    assert "| Method | " + " | ".join(VISION) + " | Avg | Δ |" in md
    line = next(row for row in md.splitlines() if row.startswith("| FDA (TSV-M, Gauss) |"))
    assert "50.00 / 91.19† |" in line and "50.00 / 85.55† |" in line
    assert "† FDA (TSV-M, Gauss), EuroSAT (paper): suspect" in md and r"91.19$^\dagger$" in tex
    for printed in ("Representation Surgery", "Fisher merging", "AdaMerging", "ProDistill", "RegMean"):
        assert f"| {printed} |" in md  # paper-only rows keep the paper's label
    assert "| Published elsewhere (other papers" in md
    assert "| Iso-C [task_vectors (Ilharco; same family as FDA)] |  |  |  |  |  |  |  |  | 84.1 |  |" in md
    assert "Sources: Iso paper arXiv:2502.04959v3 Table 1" in md

    csv = pd.read_csv(paths["paper.csv"], keep_default_na=False, na_values={c: [""] for c in ("Avg paper", "SUN397 paper")})
    flag = csv.loc[csv["row"] == "FDA (TSV-M, Gauss)", "flag"].iloc[0]
    assert flag.startswith("EuroSAT: suspect") and "Avg: printed Avg 85.55" in flag
    peers = csv[csv["method"] == "published"]
    assert len(peers) == len(published.peer_rows("vitb32")) and (peers["family"] != "").all()
    assert peers["Avg paper"].notna().all() and peers["SUN397 paper"].isna().all()
    cart = peers[peers["row"] == "CART"].iloc[0]
    assert cart["Avg paper"] == 83.0 and cart["family"].startswith("task_vectors") and "2502.04959" in cart["source"]
    assert (csv.loc[csv["method"] != "published", "family"] == "").all()


def test_peer_numbers_map_to_suites():
    df = published.peer_data()
    assert df["suite"].notna().all() and set(df["suite"]) == {"vitb32", "vitb16", "vitl14"}
    rows = published.peer_rows("vitb16")
    iso = rows[rows["row"] == "Iso-CTS"].iloc[0]
    assert iso["family"] == "TALL-mask/Consensus (TSV repo)" and iso["Avg"] == 91.1
    assert published.peer_rows("robertal").empty


def test_glue_paper_table_keeps_the_robertal_delta_as_printed(tmp_path):
    paper = tables.paper_table("robertal", GLUE).set_index(tables.KEY)
    assert paper.loc[("fda", "ta", "gauss"), tables.DELTA] == pytest.approx(0.1302)  # from the printed TA Avg 0.5918
    assert "Avg: printed Avg 0.5918" in paper.loc[("ta", "", ""), "flag"]
    md = tables.write_tables(_cells("robertal", GLUE, [("ta", "", "")]), "robertal", GLUE, tmp_path)["paper.md"].read_text()
    assert "0.5000 / 0.5918† |" in md and "Published elsewhere" not in md


def test_paper_tables_command_and_the_ablations_doc(tmp_path, capsys):
    out = tmp_path / "ablations.md"
    assert cli.main(["paper-tables", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == DOC.read_text(), "docs/paper-ablations.md is stale: fda-bench paper-tables --out docs/paper-ablations.md"
    assert "| construct l2 | 82.97 | 83.15 | 83.35 |" in text and "| sigma = 10^-4 | 71.15 |" in text
    assert "| token_num=5 (w/o STS-B) | 0.2020 |" in text and "0.7100† |" in text
    assert cli.main(["paper-tables", "--suite", "vitb32"]) == 0
    assert "| FDA (TSV, Gauss) | 71.17 | 73.25 | 86.46 | 91.19† |" in capsys.readouterr().out
    assert cli.main(["paper-tables", "--suite", "minitext"]) == cli.EXIT_ERROR
    assert "no published table" in capsys.readouterr().err
