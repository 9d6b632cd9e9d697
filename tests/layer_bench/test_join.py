"""Joining runs over disjoint seeds (fda.bench.report.join, ``fda-bench join-runs``): the joined
cells, outcomes and costs equal one run over all seeds; overlapping seeds, other test sets, other
tasks and other configurations are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fda.bench.cli import main
from fda.bench.eval.outcomes import Outcome, outcomes_path, read_outcomes, write_outcomes
from fda.bench.report import join, results

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference-seeds"
CELLS = ["pretrained", "individual", "ta", "ta_fda"]  # enough for a table with a Δ


def _shifted_run(dst: Path, shift: int, suite: str = "minivision") -> Path:
    """A copy of the committed evidence run's ``CELLS`` (and per-job costs) of ``suite`` whose
    expert seeds are shifted by ``shift``: a stand-in for a run over other expert seeds."""
    (dst / "costs").mkdir(parents=True)
    for name in CELLS:
        src = REFERENCE / f"{suite}_{name}.csv"
        cell = results.read_cells([src])
        cell["expert_seed"] += shift
        results.write_cell(cell, dst / src.name)
        shifted = {(m, i, a, e + shift, s, t, p): o
                   for (m, i, a, e, s, t, p), o in read_outcomes(outcomes_path(src)).items()}
        write_outcomes(shifted, outcomes_path(dst / src.name))
    jobs = pd.read_csv(REFERENCE / "costs" / f"{suite}.csv", keep_default_na=False)
    if "expert_seed" not in jobs.columns:
        jobs.insert(jobs.columns.get_loc("seed"), "expert_seed", 0)
    jobs["expert_seed"] = jobs["expert_seed"].astype(int) + shift
    jobs.to_csv(dst / "costs" / f"{suite}.csv", index=False)
    return dst


@pytest.fixture
def runs(tmp_path):
    return _shifted_run(tmp_path / "a", 0), _shifted_run(tmp_path / "b", 10)


def test_join_runs_gives_one_set_over_both_runs_seeds(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "joined"
    assert main(["join-runs", str(a), str(b), "--out", str(out), "--suite", "minivision"]) == 0
    for name in CELLS:
        joined = results.read_cells([out / f"minivision_{name}.csv"])
        parts = results.read_cells([a / f"minivision_{name}.csv", b / f"minivision_{name}.csv"])
        assert len(joined) == len(parts)
        assert sorted(set(joined["expert_seed"])) == sorted(set(parts["expert_seed"]))
        np.testing.assert_array_equal(joined.sort_values(results.SORT_KEYS)["value"].to_numpy(),
                                      parts.sort_values(results.SORT_KEYS)["value"].to_numpy())
        assert set(read_outcomes(outcomes_path(out / f"minivision_{name}.csv"))) == \
            set(read_outcomes(outcomes_path(a / f"minivision_{name}.csv"))) | set(read_outcomes(outcomes_path(b / f"minivision_{name}.csv")))
    md = (out / "tables" / "minivision.md").read_text()
    per_run = results.read_cells([a / "minivision_ta.csv"])["expert_seed"].nunique()  # the committed run's
    assert f"Expert seeds per row: {2 * per_run}" in md
    cost_jobs = pd.read_csv(out / "costs" / "minivision.csv")
    assert len(cost_jobs) == 2 * len(pd.read_csv(a / "costs" / "minivision.csv"))
    assert (out / "tables" / "minivision-cost.md").is_file() and (out / "figures" / "minivision-methods.png").is_file()


def test_overlapping_seeds_are_refused(runs, tmp_path, capsys):
    a, _ = runs
    copy = shutil.copytree(a, tmp_path / "copy")
    assert main(["join-runs", str(a), str(copy), "--out", str(tmp_path / "j"), "--suite", "minivision"]) == 2
    assert "in more than one run" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()


def test_runs_with_other_cells_or_other_test_sets_are_refused(runs, tmp_path, capsys):
    a, b = runs
    (b / "minivision_ta.csv").unlink()
    assert main(["join-runs", str(a), str(b), "--out", str(tmp_path / "j"), "--suite", "minivision"]) == 2
    err = capsys.readouterr().err
    assert "different cells" in err and "minivision_ta.csv" in err
    # another test split: one task's references differ
    path = outcomes_path(b / "minivision_pretrained.csv")
    outs = read_outcomes(path)
    key = next(iter(outs))
    o = outs[key]
    outs[key] = Outcome(o.predictions, np.roll(o.references, 1), o.metric)
    write_outcomes(outs, path)
    with pytest.raises(join.JoinError, match="other test references"):
        join.join_outcomes([outcomes_path(a / "minivision_pretrained.csv"), path])


def test_cells_of_other_configurations_or_tasks_are_refused(runs):
    a, b = runs
    cell = results.read_cells([b / "minivision_ta.csv"])
    results.write_cell(cell.assign(qkv_layout="fused"), b / "minivision_ta.csv")
    with pytest.raises(join.JoinError, match="disagree on qkv_layout"):
        join.join_cells([a / "minivision_ta.csv", b / "minivision_ta.csv"])
    results.write_cell(cell[cell["task"] != "digits"], b / "minivision_ta.csv")
    with pytest.raises(join.JoinError, match="different tasks"):
        join.join_cells([a / "minivision_ta.csv", b / "minivision_ta.csv"])


def test_cost_files_from_before_expert_seeds_read_as_expert_seed_0(tmp_path):
    jobs = pd.DataFrame({"suite": ["s"], "stage": ["merge"], "method": ["ta"], "init": [""], "anchor_init": [""],
                         "seed": [""], "block": [""], "task": [""], "wall_s": [1.0], "cpu_s": [1.0]})
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    jobs.to_csv(old, index=False)
    jobs.assign(expert_seed=1).to_csv(new, index=False)
    joined = join.join_jobs([old, new])
    assert sorted(joined["expert_seed"]) == [0, 1]
    with pytest.raises(join.JoinError, match="in more than one run"):
        join.join_jobs([old, old])


def test_a_join_that_fails_half_way_leaves_no_partial_output(runs, tmp_path, capsys):
    a, b = runs
    path = outcomes_path(b / "minivision_ta_fda.csv")  # the last cell in name order: the others join first
    outs = read_outcomes(path)
    key = next(iter(outs))
    outs[key] = Outcome(outs[key].predictions, np.roll(outs[key].references, 1), outs[key].metric)
    write_outcomes(outs, path)
    assert main(["join-runs", str(a), str(b), "--out", str(tmp_path / "j"), "--suite", "minivision"]) == 2
    assert "other test references" in capsys.readouterr().err
    assert not (tmp_path / "j").exists() and not list(tmp_path.glob(".j.*"))
