"""The validated protocol (docs/selection.md): the `selection` config key and its errors, grid
points, the select rule's choice (ties, non-finite scores), validation rows kept out of cells,
validated rows beside fixed ones in cells, outcomes and tables, and the DAG of one validated cell."""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fda.bench.cli.common import UsageError
from fda.bench.cli.evaluation import chosen_model
from fda.bench.config import grids
from fda.bench.config.load import validate_config
from fda.bench.config.naming import cells, check_cell, config_hash, cell_slice
from fda.bench.config.vocabulary import ConfigError
from fda.bench.eval.outcomes import Outcome, read_outcomes, write_outcomes
from fda.bench.report import results, tables
from fda.bench.report.intervals import row_intervals
from fda.bench.selection import (SelectionError, choice_record, choose, point_score, read_choice, values_label,
                                 write_choice)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def _with(mutate) -> dict:
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    return cfg


def _errors(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    return str(err.value)


# ------------------------------------------------------------------------------------ config


def test_default_config_declares_grids_that_hold_the_fixed_value():
    cfg = validate_config(DEFAULT)
    for suite in ("minitext", "minivision"):
        s = cfg["suites"][suite]
        assert set(grids.grids(s)) == {"ta", "ties"}  # Iso-C/CTS: config/selection-iso.yaml (time)
        for method in grids.grids(s):
            assert grids.fixed_point(s, method) is not None, (suite, method)  # its merge is reused
    assert "results/minitext_ta_validated.csv" in cells(cfg)
    assert "results/minitext_wudi_validated.csv" not in cells(cfg)  # no grid, no validated row


@pytest.mark.parametrize("selection, where, says", [
    ({"grid": {"ta": {"alpha": [0.1]}}}, "suites.minitext.selection.grid", "unknown key 'grid'; allowed keys: grids"),
    ({"grids": {"tx": {"alpha": [0.1]}}}, "suites.minitext.selection.grids.tx", "allowed keys: average, isoc"),
    ({"grids": {"ta": {"alfa": [0.1]}}}, "suites.minitext.selection.grids.ta.alfa", "unknown hyperparameter 'alfa'"),
    ({"grids": {"ta": {"alpha": [0.1, float("nan")]}}}, "suites.minitext.selection.grids.ta.alpha", "finite"),
    ({"grids": {"ta": {"alpha": []}}}, "suites.minitext.selection.grids.ta.alpha", "non-empty"),
    ({"grids": {"ta": {"alpha": [0.1, 0.1]}}}, "suites.minitext.selection.grids.ta.alpha", "non-unique"),
    ({"grids": {"ties": {"topk": [0]}}}, "suites.minitext.selection.grids.ties.topk", "percentage"),
])
def test_selection_typos_and_bad_values_name_the_key(selection, where, says):
    text = _errors(_with(lambda c: c["suites"]["minitext"].__setitem__("selection", selection)))
    assert where in text and says in text


def test_a_grid_needs_its_method_and_a_suite_with_a_validation_split():
    def no_ties(c):
        c["suites"]["minitext"]["methods"].pop("ties")
    text = _errors(_with(no_ties))
    assert "suites.minitext.selection.grids.ties: 'ties' has a grid but is not under methods" in text

    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    paper["suites"] = {"robertab": paper["suites"]["robertab"]}
    paper["suites"]["robertab"]["selection"] = {"grids": {"ta": {"alpha": [0.2, 0.3]}}}
    text = _errors(paper)  # the paper's experts are fetched from the hub
    assert "suites.robertab.selection: suite 'robertab' has no validation split to select on" in text
    assert "GLUE's validation split is this suite's test split" in text and "are fetched" in text
    recipe = copy.deepcopy(paper)  # experts fine-tuned here: the recipe's held-out slice of train
    section = recipe["suites"]["robertab"]
    section.update(expert_source="finetuned-here", experts={t: {"recipe": "suite-default"} for t in section["tasks"]})
    assert "results/robertab_ta_validated.csv" in cells(validate_config(recipe))
    clip = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    clip["suites"] = {"vitb32": clip["suites"]["vitb32"]}
    clip["suites"]["vitb32"]["selection"] = {"grids": {"ta": {"alpha": [0.2, 0.3]}}}
    assert "suites.vitb32.selection: suite 'vitb32' has no validation split to select on" in _errors(clip)


def test_a_bad_fixed_value_is_reported_once_under_methods_not_again_per_grid_value():
    text = _errors(_with(lambda c: c["suites"]["minivision"]["methods"]["ties"].__setitem__("topk", 0)))
    assert "suites.minivision.methods.ties.topk" in text and "selection" not in text


def test_smoke_overrides_drop_grids_with_null_and_report_their_own_errors():
    cfg = validate_config({**DEFAULT, "smoke": True})
    from fda.bench.config.suite_views import effective_suite

    assert list(grids.grids(effective_suite(cfg, "minitext"))) == ["ta"]
    assert [c for c in cells(cfg) if c.endswith("_validated.csv")] == [
        "results/minitext_ta_validated.csv", "results/minivision_ties_validated.csv",
        "results/minivision_tsvm_fda_validated.csv"]  # the smoke run's FDA selection: minivision, TSV-M init
    text = _errors(_with(lambda c: c["suites"]["minitext"]["smoke_overrides"]["selection"]["grids"].__setitem__(
        "ta", {"alpha": ["big"]})))
    assert "suites.minitext.smoke_overrides.selection.grids.ta.alpha" in text


def test_grid_points_are_the_product_in_declared_order_over_the_configured_values():
    s = {"methods": {"ties": {"alpha": 0.3, "topk": 20.0, "merge_func": "sum"}},
         "selection": {"grids": {"ties": {"alpha": [0.3, 0.6], "topk": [10.0, 20.0]}, "ta": None}}}
    assert grids.method_points(s, "ties") == [{"alpha": 0.3, "topk": 10.0}, {"alpha": 0.3, "topk": 20.0},
                                              {"alpha": 0.6, "topk": 10.0}, {"alpha": 0.6, "topk": 20.0}]
    assert grids.point_hparams(s, "ties", 2) == {"alpha": 0.6, "topk": 10.0, "merge_func": "sum"}
    assert grids.fixed_point(s, "ties") == 1 and grids.method_points(s, "ta") == []
    assert grids.fixed_point({"methods": {"ta": {}}, "selection": {"grids": {"ta": {"alpha": [0.5, 1]}}}}, "ta",
                             {"alpha": 1.0}) == 1  # the dataclass default is the fixed value


def test_the_validated_cell_hash_follows_the_grid_and_unknown_cells_say_why():
    cfg = validate_config(DEFAULT)
    h = config_hash(cell_slice(cfg, "minitext", "ta", protocol="validated"))
    assert h != config_hash(cell_slice(cfg, "minitext", "ta"))
    reordered = _with(lambda c: c["suites"]["minitext"]["selection"]["grids"]["ta"].__setitem__("alpha", [0.5, 0.3, 0.1]))
    assert config_hash(cell_slice(validate_config(reordered), "minitext", "ta", protocol="validated")) != h
    with pytest.raises(ConfigError, match="selected 'wudi' is not configured for suite 'minitext' .configured: ta, ties"):
        check_cell(cfg, "results/minitext_wudi_validated.csv", {"suite": "minitext", "method": "wudi"})


# ------------------------------------------------------------------------------------ select


def _raw(values: dict[str, float], split: str = "validation") -> pd.DataFrame:
    rows = [{"task": t, "metric": "accuracy", "value": v} for t, v in values.items()]
    return results.raw_frame(rows, method="ta", split=split)


def test_choose_takes_the_first_best_and_refuses_non_finite_scores():
    assert choose([0.5, 0.7, 0.7, 0.1]) == 1  # a tie: the first in declared order
    assert choose([0.7]) == 0
    for bad in (math.nan, math.inf):
        with pytest.raises(SelectionError, match=r"grid point 1 \(α=0.5\) has a non-finite validation score"):
            choose([0.5, bad, 0.9], ["α=0.1", "α=0.5", "α=1"])
    with pytest.raises(SelectionError, match="no grid points"):
        choose([])


def test_point_score_is_the_mean_headline_over_tasks_of_validation_rows_only():
    score, per_task = point_score(_raw({"a": 0.5, "b": 0.9}), ["a", "b"])
    assert score == pytest.approx(0.7) and per_task == {"a": 0.5, "b": 0.9}
    assert math.isnan(point_score(_raw({"a": 0.5, "b": math.nan}), ["a", "b"])[0])
    with pytest.raises(SelectionError, match="validation rows only"):
        point_score(_raw({"a": 0.5, "b": 0.9}, split="test"), ["a", "b"], where="x.csv")
    with pytest.raises(SelectionError, match=r"task\(s\) \['c'\]"):
        point_score(_raw({"a": 0.5}), ["a", "c"])


def _record(scores, **kw):
    points = [{"alpha": a} for a in (0.1, 0.3, 0.5)][: len(scores)]
    return choice_record(suite="minitext", method="ta", grid={"alpha": [p["alpha"] for p in points]}, points=points,
                         hparams=[{"coverage": "all", **p} for p in points], models=[f"m{i}" for i in range(len(points))],
                         scores=scores, task_scores=[{"a": s} for s in scores], **kw)


def test_the_choice_file_records_every_point_the_rule_and_the_chosen_model(tmp_path):
    rec = _record([0.6, 0.8, 0.8])
    assert rec["chosen"] == {"point": 1, "values": {"alpha": 0.3}, "hparams": {"coverage": "all", "alpha": 0.3},
                             "model": "m1", "score": 0.8}
    assert rec["tie_rule"] == "first best in declared order" and rec["split"] == "validation"
    assert rec["at_edge"] == [] and _record([0.6, 0.7, 0.9])["at_edge"] == ["alpha"]  # α=0.5: the grid's end
    assert [p["score"] for p in rec["points"]] == [0.6, 0.8, 0.8]
    path = write_choice(rec, tmp_path / "choice.json")
    assert read_choice(path) == json.loads(json.dumps(rec))
    assert path.read_bytes() == write_choice(_record([0.6, 0.8, 0.8]), tmp_path / "again.json").read_bytes()
    (tmp_path / "bad.json").write_text('{"chosen": 1}')
    with pytest.raises(SelectionError, match="not a choice file"):
        read_choice(tmp_path / "bad.json")
    with pytest.raises(SelectionError, match="non-finite"):
        _record([0.6, math.nan, 0.8])


def test_evaluate_choice_takes_the_chosen_model_and_refuses_another_methods_choice(tmp_path):
    path = write_choice(_record([0.6, 0.8, 0.7]), tmp_path / "choice.json")
    args = argparse.Namespace(choice=str(path), model=None, split="test", method="ta", expert_seed=0, init="",
                              anchor_init="")
    assert chosen_model(args) == ("m1", "validated", '{"alpha":0.3}')
    with pytest.raises(UsageError, match="not of"):
        chosen_model(argparse.Namespace(**{**vars(args), "method": "ties"}))
    with pytest.raises(UsageError, match="not both"):
        chosen_model(argparse.Namespace(**{**vars(args), "model": ["x.safetensors"]}))
    assert chosen_model(argparse.Namespace(**{**vars(args), "choice": None, "model": ["x"]})) == ("x", "fixed", "")


# ------------------------------------------------------------------------------------ cells, outcomes, tables

TASKS = ["a", "b"]


def _cell(method, values, protocol="fixed", hparams="", expert_seed=0):
    rows = [{"task": t, "metric": "accuracy", "value": v} for t, v in zip(TASKS, values)]
    individual = results.raw_frame([{"task": t, "metric": "accuracy", "value": 1.0} for t in TASKS],
                                   method="individual", expert_seed=expert_seed)
    raw = results.raw_frame(rows, method=method, protocol=protocol, hparams=hparams, expert_seed=expert_seed)
    return results.build_cell([raw], individual, suite="minitext", expert_source="finetuned-here",
                              config_hash="h", version="0")


def test_validation_rows_never_enter_a_cell():
    individual = results.raw_frame([{"task": "a", "metric": "accuracy", "value": 1.0}], method="individual")
    raw = results.raw_frame([{"task": "a", "metric": "accuracy", "value": 0.5}], method="ta", split="validation")
    with pytest.raises(results.CellError, match="validation split cannot enter a result cell"):
        results.build_cell([raw], individual, suite="minitext", expert_source="x", config_hash="h", version="0")


def test_old_cells_and_raw_files_read_as_fixed(tmp_path):
    cell = _cell("ta", [0.5, 0.7])
    old = tmp_path / "old.csv"
    cell.drop(columns=["protocol", "hparams"]).to_csv(old, index=False)
    back = results.read_cells([old])
    assert set(back["protocol"]) == {"fixed"} and set(back["hparams"]) == {""}
    raw = tmp_path / "raw.csv"
    _raw({"a": 0.5}).drop(columns=["protocol", "hparams", "split"]).to_csv(raw, index=False)
    assert results.read_raw(raw)[["protocol", "split"]].drop_duplicates().values.tolist() == [["fixed", "test"]]


def test_validated_outcomes_have_their_own_names_and_fixed_files_are_unchanged(tmp_path):
    o = Outcome(np.array([1, 0, 1]), np.array([1, 1, 1]), "accuracy")
    fixed = write_outcomes({("ta", "", "", 0, 0, "a"): o}, tmp_path / "fixed.npz")
    same = write_outcomes({("ta", "", "", 0, 0, "a", "fixed"): o}, tmp_path / "same.npz")
    assert fixed.read_bytes() == same.read_bytes()
    with np.load(fixed) as z:
        assert sorted(z.files) == ["ta|||0|0|a|metric", "ta|||0|0|a|predictions", "ta|||0|0|a|references"]
    both = write_outcomes({("ta", "", "", 0, 0, "a", "fixed"): o, ("ta", "", "", 0, 0, "a", "validated"): o},
                          tmp_path / "both.npz")
    with np.load(both) as z:
        assert "ta|||0|0|a|validated|predictions" in z.files
    assert set(read_outcomes(both)) == {("ta", "", "", 0, 0, "a", "fixed"), ("ta", "", "", 0, 0, "a", "validated")}


def _outcome(p_correct: float, n: int = 200, seed: int = 0) -> Outcome:
    correct = np.random.default_rng(seed).random(n) < p_correct
    return Outcome(np.where(correct, 1, 0), np.ones(n, dtype=int), "accuracy")


def test_tables_show_both_protocols_labelled_with_the_chosen_values(tmp_path):
    cells_df = pd.concat([_cell("individual", [1.0, 1.0]), _cell("ta", [0.5, 0.7]),
                          _cell("ta", [0.6, 0.8], "validated", '{"alpha":0.5}'),
                          _cell("ties", [0.4, 0.4], "validated", '{"alpha":0.6}')], ignore_index=True)
    t = tables.build_table(cells_df, "minitext", TASKS)
    assert list(t["row"]) == ["Individual", "TA", "TA (validated, α=0.5)", "TIES (validated, α=0.6)"]
    assert list(t["protocol"]) == ["fixed", "fixed", "validated", "validated"]
    assert t.set_index("row").loc["TA (validated, α=0.5)", "Avg"] == pytest.approx(0.7)
    outcomes = {("individual", "", "", 0, 0, task): _outcome(1.0) for task in TASKS}
    outcomes |= {("ta", "", "", 0, 0, task): _outcome(0.6, seed=1) for task in TASKS}
    outcomes |= {("ta", "", "", 0, 0, task, "validated"): _outcome(0.7, seed=2) for task in TASKS}
    outcomes |= {("ties", "", "", 0, 0, task, "validated"): _outcome(0.4, seed=3) for task in TASKS}
    ints = row_intervals(outcomes, TASKS, n_boot=200)
    assert ints.of(("ta", "", "", "validated"), "Avg").lo > ints.of(("ta", "", ""), "Avg").lo  # its own outcomes
    paths = tables.write_tables(cells_df, "minitext", TASKS, tmp_path, outcomes=outcomes)
    md = paths["absolute.md"].read_text()
    assert "| TA (validated, α=0.5) |" in md and "| TA |" in md
    assert "(validated, α=…)" in md  # the note that says what a validated row is
    csv = pd.read_csv(paths["absolute.csv"], keep_default_na=False)
    assert csv.loc[csv["row"] == "TA (validated, α=0.5)", "Avg lo"].notna().all()
    paper = pd.read_csv(paths["paper.csv"], keep_default_na=False)
    assert not paper["row"].str.contains("validated").any()  # the paper's rows are fixed


def test_expert_seeds_that_chose_differently_show_each_choice():
    df = pd.concat([_cell("ta", [0.6, 0.8], "validated", '{"alpha":0.5}', expert_seed=0),
                    _cell("ta", [0.6, 0.8], "validated", '{"alpha":0.1}', expert_seed=1)], ignore_index=True)
    assert tables.build_table(df, "minitext", TASKS)["row"].tolist() == ["TA (validated, α=0.5/α=0.1)"]
    assert values_label({"alpha": 0.3, "topk": 20.0}) == "α=0.3, topk=20"


# ------------------------------------------------------------------------------------ the DAG


def test_one_validated_cell_builds_only_what_it_needs(tmp_path):
    from test_workflow import dry_run

    jobs = dry_run(tmp_path, "results/minitext_ta_validated.csv")
    rules = Counter(j["rule"] for j in jobs)
    assert rules == Counter({"prepare_data": 1, "prepare_base": 1, "prepare_expert": 8,
                             "evaluate_reference": 1,  # individual, for `normalized`
                             "merge_baseline": 1,      # the fixed α=0.3 is grid point 1: its merge is reused
                             "merge_grid": 2, "evaluate_grid": 3, "select": 1, "evaluate_validated": 1,
                             "cell_validated": 1})
    assert {j["wildcards"]["point"] for j in jobs if j["rule"] == "merge_grid"} == {"0", "2"}
    assert {j["wildcards"].get("selected") for j in jobs if j["rule"] in ("merge_grid", "select")} == {"ta"}
    assert [j["output"] for j in jobs if j["rule"] == "select"] == [["work/minitext/eseed0/select/ta/choice.json"]]
    smoke = dry_run(tmp_path, "results/minitext_ta_validated.csv", "--config", "smoke=true")
    assert Counter(j["rule"] for j in smoke)["merge_grid"] == 1  # α ∈ {0.3 (the fixed merge), 0.5}


def test_an_unconfigured_validated_cell_stops_before_any_job(tmp_path):
    from test_workflow import snakemake

    proc = snakemake("-n", "--workflow-profile", "none", "results/minitext_ties_validated.csv", "--config", "smoke=true",
                     cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "selected 'ties' is not configured for suite 'minitext'" in proc.stdout + proc.stderr


def test_claims_compare_fda_with_each_protocols_baseline():
    from fda.bench.report import claims

    rows = [("pretrained", "", ""), ("ta", "", ""), ("ta", "", "", "validated"), ("fda", "pretrained", "gauss"),
            ("fda", "ta", "gauss")]
    got = claims.pairs(rows)
    assert ("fda(pretrained) >= ta", ("fda", "pretrained", "gauss", "fixed"), ("ta", "", "", "fixed")) in got
    assert ("fda(pretrained) >= ta (validated)", ("fda", "pretrained", "gauss", "fixed"), ("ta", "", "", "validated")) in got
    assert ("fda >= init", ("fda", "ta", "gauss", "fixed"), ("ta", "", "", "fixed")) in got  # its own init: fixed


def test_a_glue_suite_with_experts_fine_tuned_here_selects_through_the_same_rules(tmp_path):
    from test_workflow import dry_run

    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    section = paper["suites"]["robertab"]
    section.update(expert_source="finetuned-here", experts={t: {"recipe": "suite-default"} for t in section["tasks"]},
                   selection={"grids": {"ta": {"alpha": [0.2, 0.3, 0.5]}}})
    config = tmp_path / "glue.yaml"
    config.write_text(yaml.safe_dump({**paper, "suites": {"robertab": section}}, sort_keys=False))
    rules = Counter(j["rule"] for j in dry_run(tmp_path, "results/robertab_ta_validated.csv", "--configfile", str(config)))
    assert rules["merge_grid"] == 2 and rules["evaluate_grid"] == 3 and rules["cell_validated"] == 1
