"""Per-example outcomes and the intervals computed from them: files, resampling, pairing, tables."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from fda.bench.eval import glue_metrics
from fda.bench.eval.outcomes import (Outcome, OutcomeError, merge_outcomes, outcomes_path, pop_outcomes,
                                     read_outcomes, write_evaluation_outcomes, write_outcomes)
from fda.bench.report import intervals, results, tables

N = 400  # test examples per task


def _outcome(correct: np.ndarray) -> Outcome:
    """Binary labels with the given per-example correctness [n]."""
    refs = np.arange(len(correct)) % 2
    return Outcome(np.where(correct, refs, 1 - refs), refs, "accuracy")


def _h(name: str) -> int:
    """A stable seed from a name (``hash`` of a str changes between processes)."""
    return zlib.crc32(name.encode())


def _correct(p: float, seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < p


# ------------------------------------------------------------------------------------ files


def test_outcomes_round_trip_and_refuse_bad_files(tmp_path):
    o = {("ta", "", "", 0, 0, "tech"): _outcome(_correct(0.7, 1)),
         ("fda", "ta", "gauss", 0, 2, "arts"): Outcome(np.array([0.5, 1.5, 2.0]), np.array([0.4, 1.0, 2.2]), "corr")}
    path = write_outcomes(o, tmp_path / "x.npz")
    back = read_outcomes(path)
    assert set(back) == {(*k, "fixed") for k in o}  # keys without a protocol are fixed rows'
    for k in o:
        np.testing.assert_array_equal(back[(*k, "fixed")].predictions, o[k].predictions)
        assert back[(*k, "fixed")].metric == o[k].metric
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(OutcomeError, match="bad.npz"):
        read_outcomes(tmp_path / "bad.npz")
    np.savez(tmp_path / "pickled.npz", **{"ta|||0|t|predictions": np.array([object()], dtype=object)})
    with pytest.raises(OutcomeError, match="pickled.npz"):
        read_outcomes(tmp_path / "pickled.npz")
    with pytest.raises(OutcomeError, match="already"):
        merge_outcomes([path, path])
    assert outcomes_path("work/s/eseed0/eval/ta.csv").name == "ta.npz"


def test_outcomes_compare_by_value():
    a = _outcome(_correct(0.7, 1))
    assert a == _outcome(_correct(0.7, 1)) and a != _outcome(_correct(0.7, 2))
    assert [{"outcome": a}] == [{"outcome": _outcome(_correct(0.7, 1))}]  # rows with outcomes compare


def test_outcome_rejects_malformed_input():
    with pytest.raises(OutcomeError, match="equal-length"):
        Outcome(np.zeros(3), np.zeros(4), "accuracy")
    with pytest.raises(OutcomeError, match="non-finite"):
        Outcome(np.array([np.nan, 1.0]), np.zeros(2), "corr")
    with pytest.raises(OutcomeError, match="resampling rule"):
        Outcome(np.zeros(3), np.zeros(3), "bleu")


def test_evaluation_outcomes_are_popped_from_rows_and_required_per_task(tmp_path):
    rows = [{"task": "a", "metric": "accuracy", "value": 0.5, "outcome": _outcome(_correct(0.5, 0, 10))},
            {"task": "a", "metric": "f1macro", "value": 0.4}, {"task": "b", "metric": "accuracy", "value": 0.1}]
    got = pop_outcomes(rows, method="ta", seed=3)
    assert list(got) == [("ta", "", "", 0, 3, "a", "fixed")] and all("outcome" not in r for r in rows)
    with pytest.raises(OutcomeError, match=r"\['b'\]"):
        write_evaluation_outcomes(got, ["a", "b"], tmp_path / "o.npz", "minitext")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("metric", ["matthews", "accf1", "corr", "f1macro"])
def test_recomputed_metrics_equal_the_reported_ones(metric):
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, 200)
    preds = np.where(rng.random(200) < 0.8, refs, 1 - refs)
    if metric == "corr":
        refs = rng.random(200) * 5
        preds = refs + rng.normal(0, 1, 200)
        expected = glue_metrics.glue_metrics("stsb", preds, refs)["corr"]
    elif metric == "f1macro":
        from sklearn.metrics import f1_score

        expected = f1_score(refs, preds, average="macro")
    else:
        expected = glue_metrics.glue_metrics("cola" if metric == "matthews" else "mrpc", preds, refs)[metric]
    o = Outcome(preds, refs, metric)
    assert o.score() == pytest.approx(expected)
    idx = rng.integers(0, 200, (5, 200))
    assert o.resampled(idx) == pytest.approx([o.score(i) for i in idx])


def test_vectorised_accuracy_resampling_equals_the_loop():
    o = _outcome(_correct(0.6, 3))
    idx = np.random.default_rng(1).integers(0, N, (50, N))
    np.testing.assert_allclose(o.resampled(idx), [o.score(i) for i in idx])


# ------------------------------------------------------------------------------------ intervals


def test_one_seed_interval_is_the_binomial_test_set_interval():
    correct = _correct(0.7, 5)
    ints = intervals.row_intervals({("ta", "", "", 0, 0, "t"): _outcome(correct)}, ["t"], n_boot=2000)
    iv = ints.of(("ta", "", ""), "t")
    p = correct.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / N)
    assert iv.lo < p < iv.hi
    assert (iv.hi - iv.lo) / 2 == pytest.approx(half, rel=0.15)
    assert ints.n_seeds[("ta", "", "")] == intervals.SeedCount(1, 1)


def test_seed_spread_widens_the_interval():
    """Three seeds scoring 0.55 / 0.70 / 0.85: the interval covers seed variation, not only the
    test set's (which alone is about ±0.045 at n = 400)."""
    outs = {("fda", "ta", "gauss", 0, s, "t"): _outcome(_correct(p, 10 + s)) for s, p in enumerate([0.55, 0.70, 0.85])}
    outs[("ta", "", "", 0, 0, "t")] = _outcome(_correct(0.7, 20))
    ints = intervals.row_intervals(outs, ["t"], n_boot=2000)
    fda, ta = ints.of(("fda", "ta", "gauss"), "t"), ints.of(("ta", "", ""), "t")
    assert (fda.hi - fda.lo) > 2 * (ta.hi - ta.lo)
    assert ints.n_seeds[("fda", "ta", "gauss")] == intervals.SeedCount(1, 3)


def test_paired_difference_detects_a_small_consistent_gain_that_unpaired_intervals_overlap():
    base = _correct(0.7, 7)
    better = base.copy()
    better[np.flatnonzero(~base)[:12]] = True  # 12 of 400 examples fixed, none broken: +3 points
    outs = {("ta", "", "", 0, 0, "t"): _outcome(base), ("fda", "ta", "gauss", 0, 0, "t"): _outcome(better)}
    ints = intervals.row_intervals(outs, ["t"], n_boot=2000)
    a, b = ints.of(("fda", "ta", "gauss"), "t"), ints.of(("ta", "", ""), "t")
    assert a.lo < b.hi  # the two unpaired intervals overlap
    d = ints.paired_difference(("fda", "ta", "gauss"), ("ta", "", ""), "t")
    assert d.excludes_zero() and d.lo > 0
    same = intervals.row_intervals({("ta", "", "", 0, 0, "t"): _outcome(base), ("fda", "ta", "gauss", 0, 0, "t"): _outcome(base)}, ["t"])
    assert not same.paired_difference(("fda", "ta", "gauss"), ("ta", "", ""), "t").excludes_zero()


def test_avg_and_normalized_use_every_task_and_the_same_draws():
    outs = {}
    for t, p in (("a", 0.6), ("b", 0.8)):
        outs[("ta", "", "", 0, 0, t)] = _outcome(_correct(p, _h(t)))
        outs[("individual", "", "", 0, 0, t)] = _outcome(_correct(0.9, 1 + _h(t)))
    ints = intervals.row_intervals(outs, ["a", "b"], n_boot=500)
    reps = ints.reps[("ta", "", "")]
    np.testing.assert_allclose(reps["Avg"], (reps["a"] + reps["b"]) / 2)
    nv = ints.normalized(("ta", "", ""), "Avg")
    point = np.mean([outs[("ta", "", "", 0, 0, t)].score() / outs[("individual", "", "", 0, 0, t)].score() for t in "ab"])
    assert nv.lo < point < nv.hi
    missing = intervals.row_intervals({("ta", "", "", 0, 0, "a"): outs[("ta", "", "", 0, 0, "a")]}, ["a", "b"])
    assert missing.of(("ta", "", ""), "Avg") is None


def test_different_test_sets_cannot_be_paired():
    outs = {("ta", "", "", 0, 0, "t"): _outcome(_correct(0.7, 1)), ("fda", "ta", "gauss", 0, 0, "t"): _outcome(_correct(0.7, 1, 300))}
    with pytest.raises(OutcomeError, match="same test set"):
        intervals.row_intervals(outs, ["t"])


def test_draws_are_deterministic():
    outs = {("ta", "", "", 0, 0, "t"): _outcome(_correct(0.7, 1))}
    a = intervals.row_intervals(outs, ["t"], seed=0).of(("ta", "", ""), "t")
    b = intervals.row_intervals(outs, ["t"], seed=0).of(("ta", "", ""), "t")
    assert a == b


# ------------------------------------------------------------------------------------ expert seeds


def test_outcome_files_from_before_expert_seeds_read_as_expert_seed_0(tmp_path):
    """A five-field entry name (method|init|anchor_init|seed|task|field) is expert seed 0."""
    o = _outcome(_correct(0.7, 1, 20))
    old = {"fda|ta|gauss|2|tech|predictions": o.predictions, "fda|ta|gauss|2|tech|references": o.references,
           "fda|ta|gauss|2|tech|metric": np.array("accuracy")}
    np.savez(tmp_path / "old.npz", **old)
    back = read_outcomes(tmp_path / "old.npz")
    assert list(back) == [("fda", "ta", "gauss", 0, 2, "tech", "fixed")]
    np.testing.assert_array_equal(back[("fda", "ta", "gauss", 0, 2, "tech", "fixed")].predictions, o.predictions)
    new = write_outcomes({("fda", "ta", "gauss", 3, 2, "tech"): o}, tmp_path / "new.npz")
    assert list(read_outcomes(new)) == [("fda", "ta", "gauss", 3, 2, "tech", "fixed")]


def test_rows_of_several_expert_seeds_are_resampled_together():
    """The expert-seed draw is shared by every row: a row that is all wrong on expert seed 0 and all
    right on expert seed 1 scores, per replicate, the share of slots that drew expert seed 1; a row
    with the same expert seeds gets the same replicates, and the mirrored row exactly 1 minus them."""
    n = 50
    wrong, right = np.zeros(n, bool), np.ones(n, bool)
    outs = {}
    for row, (e0, e1) in {"ta": (wrong, right), "tsvm": (wrong, right), "wudi": (right, wrong)}.items():
        outs[(row, "", "", 0, 0, "t")] = _outcome(e0)
        outs[(row, "", "", 1, 0, "t")] = _outcome(e1)
    for s in range(3):  # FDA: three FDA seeds on each expert seed, the same pattern
        outs[("fda", "ta", "gauss", 0, s, "t")] = _outcome(wrong)
        outs[("fda", "ta", "gauss", 1, s, "t")] = _outcome(right)
    ints = intervals.row_intervals(outs, ["t"], n_boot=500)
    ta = ints.reps[("ta", "", "")]["t"]
    assert set(np.unique(ta)) <= {0.0, 0.5, 1.0} and len(np.unique(ta)) == 3  # 0, 1 or 2 slots drew seed 1
    np.testing.assert_array_equal(ints.reps[("tsvm", "", "")]["t"], ta)
    np.testing.assert_array_equal(ints.reps[("wudi", "", "")]["t"], 1 - ta)
    np.testing.assert_array_equal(ints.reps[("fda", "ta", "gauss")]["t"], ta)  # FDA seeds drawn within each slot
    assert ints.n_seeds[("fda", "ta", "gauss")] == intervals.SeedCount(2, 3) and str(ints.n_seeds[("ta", "", "")]) == "2×1"
    assert ints.of(("ta", "", ""), "t") == intervals.Interval(0.0, 1.0)  # expert seeds dominate the interval


def test_paired_delta_detects_a_consistent_gain_across_very_different_expert_seeds():
    """Expert seeds scoring 0.45 / 0.70 / 0.95 make each row's own interval wide; FDA fixes 12 of the
    400 examples on every expert seed and FDA seed. Paired by example and expert seed, the gain is
    detected; the unpaired intervals overlap widely."""
    outs = {}
    for e, p in enumerate([0.45, 0.70, 0.95]):
        base = _correct(p, 100 + e)
        outs[("ta", "", "", e, 0, "t")] = _outcome(base)
        for s in range(2):
            better = base.copy()
            better[np.flatnonzero(~base)[: 12 + s]] = True
            outs[("fda", "ta", "gauss", e, s, "t")] = _outcome(better)
    ints = intervals.row_intervals(outs, ["t"], n_boot=2000)
    fda, ta = ints.of(("fda", "ta", "gauss"), "t"), ints.of(("ta", "", ""), "t")
    assert ta.hi - ta.lo > 0.3 and fda.lo < ta.hi  # wide, overlapping
    d = ints.paired_difference(("fda", "ta", "gauss"), ("ta", "", ""), "t")
    assert d.excludes_zero() and 0 < d.lo and d.hi < 0.06


def test_one_expert_seed_draws_the_fda_seeds_as_before():
    """With one expert seed, the FDA-seed draws are the ones of the one-level bootstrap (the same
    random stream), so tables of runs before expert seeds keep their intervals."""
    outs = {("fda", "ta", "gauss", 0, s, "t"): _outcome(_correct(p, s)) for s, p in enumerate([0.5, 0.6, 0.8])}
    draws = intervals.make_draws(outs, ["t"], n_boot=300)
    rng = np.random.default_rng(0)
    rng.integers(0, N, size=(300, N))
    np.testing.assert_array_equal(draws.seed_uniforms[:, 0, :], rng.random((300, 3)))


# ------------------------------------------------------------------------------------ tables


def _cells_and_outcomes():
    rows, outs = [], {}
    specs = {("pretrained", "", ""): 0.3, ("individual", "", ""): 0.9, ("ta", "", ""): 0.6}
    raw = []
    for (m, i, a), p in specs.items():
        for t in ("x", "y"):
            c = _correct(p, _h(m + t))
            outs[(m, i, a, 0, 0, t)] = _outcome(c)
            rows.append({"task": t, "metric": "accuracy", "value": float(c.mean())})
        raw.append(results.raw_frame(rows[-2:], method=m, init=i, anchor_init=a, seed=0))
    base = outs[("ta", "", "", 0, 0, "x")]
    fda_rows = []
    for s in range(2):
        for t in ("x", "y"):
            c = (outs[("ta", "", "", 0, 0, t)].predictions == outs[("ta", "", "", 0, 0, t)].references).copy()
            c[np.flatnonzero(~c)[: 40 + 5 * s]] = True  # +10 points or more on every task and seed
            outs[("fda", "ta", "gauss", 0, s, t)] = _outcome(c)
            fda_rows.append({"task": t, "metric": "accuracy", "value": float(c.mean())})
        raw.append(results.raw_frame(fda_rows[-2:], method="fda", init="ta", anchor_init="gauss", seed=s))
    assert base is outs[("ta", "", "", 0, 0, "x")]
    individual = raw[1]
    cells = pd.concat([results.build_cell([r], individual, suite="minitext", expert_source="finetuned-here",
                                          config_hash="h", version="0") for r in raw], ignore_index=True)
    return cells, outs


def test_tables_show_intervals_and_mark_a_significant_delta(tmp_path):
    cells, outs = _cells_and_outcomes()
    paths = tables.write_tables(cells, "minitext", ["x", "y"], tmp_path, outcomes=outs)
    csv = pd.read_csv(paths["absolute.csv"], keep_default_na=False, na_values=[""])
    fda = csv[csv["method"] == "fda"].iloc[0]
    assert fda["Avg lo"] < fda["Avg"] < fda["Avg hi"]
    assert fda["Δ lo"] > 0 and bool(fda["Δ sig"]) and fda["seeds"] == "1×2"
    ta = csv[csv["method"] == "ta"].iloc[0]
    assert pd.isna(ta["Δ lo"]) and ta["seeds"] == "1×1"
    md = paths["absolute.md"].read_text()
    assert "95% bootstrap interval" in md and "*" in md.split("FDA (TA, Gauss)")[1].splitlines()[0]
    assert "±" in md.split("| TA |")[1].splitlines()[0]
    ncsv = pd.read_csv(paths["normalized.csv"])
    assert (ncsv["Avg lo"] <= ncsv["Avg"]).all() and (ncsv["Avg"] <= ncsv["Avg hi"]).all()
    tex = paths["absolute.tex"].read_text()
    assert "±" in tex


def test_tables_without_outcomes_say_so(tmp_path):
    cells, _ = _cells_and_outcomes()
    paths = tables.write_tables(cells, "minitext", ["x", "y"], tmp_path)
    assert "without intervals" in paths["absolute.md"].read_text()
    assert "Avg lo" not in pd.read_csv(paths["absolute.csv"]).columns


def test_readme_summary_reads_the_tables_intervals(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import results_summary

    cells, outs = _cells_and_outcomes()
    tables.write_tables(cells, "minitext", ["x", "y"], tmp_path, outcomes=outs)
    text = results_summary.summary(tmp_path, ["minitext"])
    fda_line = next(line for line in text.splitlines() if line.startswith("| FDA (TA, Gauss)"))
    table = pd.read_csv(tmp_path / "minitext.csv")
    fda = table[table["method"] == "fda"].iloc[0]
    assert f"{100 * fda['Avg']:.1f} ±{100 * (fda['Avg hi'] - fda['Avg lo']) / 2:.1f}" in fda_line
    assert fda_line.rstrip(" |").endswith("*")  # the significant paired Δ
    assert "Seeds per row (expert × FDA): minitext: 1×1, 1×2" in text
