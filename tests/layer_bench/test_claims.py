"""The paper's claims on outcomes (fda.bench.report.claims, ``fda-bench claims``): a clear gain
holds, a clear loss is contradicted, no difference is unresolved, and runs are counted."""

from __future__ import annotations

import numpy as np
import pytest

from fda.bench.cli import main
from fda.bench.eval.outcomes import Outcome, write_outcomes
from fda.bench.report import claims

N = 400
TASKS = ["x", "y"]


def _outcome(correct: np.ndarray) -> Outcome:
    refs = np.arange(len(correct)) % 2
    return Outcome(np.where(correct, refs, 1 - refs), refs, "accuracy")


def _run(fda_shift: int, seed: int = 0) -> dict:
    """pretrained 50%, TA 60%, TSV-M 70%; FDA from TA and from pretrained: TA's correct examples
    with ``fda_shift`` more (or, negative, fewer) per task, on each of two FDA seeds."""
    rng = np.random.default_rng(seed)
    base = {m: {t: rng.random(N) < p for t in TASKS} for m, p in (("pretrained", 0.5), ("ta", 0.6), ("tsvm", 0.7))}
    outs = {(m, "", "", 0, 0, t): _outcome(c) for m, per in base.items() for t, c in per.items()}
    for init in ("ta", "pretrained"):
        for s in range(2):
            for t in TASKS:
                c = base["ta"][t].copy()
                idx = np.flatnonzero(~c if fda_shift > 0 else c)[: abs(fda_shift) + s]
                c[idx] = fda_shift > 0
                outs[("fda", init, "gauss", 0, s, t)] = _outcome(c)
    return outs


def _verdicts(comparisons):
    return {(c.claim, c.row[1], c.baseline[0]): c.verdict for c in comparisons}


def test_a_clear_gain_holds_a_clear_loss_is_contradicted():
    up = _verdicts(claims.check_claims(_run(+40), TASKS))
    assert up[("fda >= init", "ta", "ta")] == claims.HOLDS
    assert up[("fda(pretrained) >= ta", "pretrained", "ta")] == claims.HOLDS
    assert up[("fda >= init", "pretrained", "pretrained")] == claims.HOLDS  # 70% vs 50%
    down = _verdicts(claims.check_claims(_run(-40), TASKS))
    assert down[("fda >= init", "ta", "ta")] == claims.CONTRADICTED
    assert down[("fda(pretrained) >= tsvm", "pretrained", "tsvm")] == claims.CONTRADICTED


def test_no_difference_is_unresolved_and_the_point_estimate_is_the_tables():
    comps = {(c.claim, c.row[1], c.baseline[0]): c for c in claims.check_claims(_run(+1), TASKS)}
    c = comps[("fda >= init", "ta", "ta")]
    assert c.verdict == claims.UNRESOLVED and c.lo <= 0 <= c.hi
    # FDA seeds gain 1 and 2 examples per task: mean 1.5 / 400
    assert c.diff == pytest.approx(1.5 / N)


def test_runs_are_counted(tmp_path, capsys):
    runs = {"a": claims.check_claims(_run(+40, 0), TASKS), "b": claims.check_claims(_run(-40, 1), TASKS),
            "c": claims.check_claims(_run(+40, 2), TASKS)}
    counts = claims.count_verdicts(runs)
    key = ("fda >= init", ("fda", "ta", "gauss", "fixed"), ("ta", "", "", "fixed"))  # rows carry their protocol
    assert counts[key] == {claims.HOLDS: 2, claims.CONTRADICTED: 1, claims.UNRESOLVED: 0}
    assert "2/3 (✗ 1)" in claims.render_claims(runs)


def test_claims_command_reads_a_runs_outcomes(tmp_path, capsys):
    for name, shift in (("one", +40), ("two", -40)):
        run = tmp_path / name
        run.mkdir()
        write_outcomes(_run(shift), run / "minitext_all.npz")
    rc = main(["claims", str(tmp_path / "one"), str(tmp_path / "two"), "--suite", "minitext"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "| one | two |" in out.out and "FDA (TA, Gauss) − TA" in out.out and "1/2 (✗ 1)" in out.out


def test_claims_and_tables_give_the_same_interval_whatever_the_column_order():
    from fda.bench.report.intervals import AVG, row_intervals

    outs = _run(+40)
    a = row_intervals(outs, ["x", "y"]).paired_difference(("fda", "ta", "gauss"), ("ta", "", ""), AVG)
    b = row_intervals(outs, ["y", "x"]).paired_difference(("fda", "ta", "gauss"), ("ta", "", ""), AVG)
    assert (a.lo, a.hi) == (b.lo, b.hi)


def test_claims_command_names_a_run_without_outcomes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["claims", str(tmp_path / "empty"), "--suite", "minitext"]) == 2
    assert "holds no per-example outcomes of minitext" in capsys.readouterr().err
