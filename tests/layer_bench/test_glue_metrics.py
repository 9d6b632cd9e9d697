"""GLUE metric functions on hand-computed cases (expected numbers written out)."""

from __future__ import annotations

import math

import pytest

from fda.bench.eval.glue_metrics import glue_metrics, metric_rows

# 8 binary predictions: TP=3 (idx 0,1,2), FN=1 (idx 3), FP=1 (idx 4), TN=3 (idx 5,6,7)
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 0, 0, 0]


def test_accuracy_tasks():
    for task in ("sst2", "qnli", "rte"):
        assert glue_metrics(task, PREDS, LABELS) == {"accuracy": 0.75}  # 6 of 8
    assert glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 2, 1]) == {"accuracy": 0.75}


def test_mrpc_qqp_mean_of_accuracy_and_f1():
    # precision 3/4, recall 3/4 -> F1 0.75; accuracy 0.75 -> mean 0.75; make them differ:
    preds = [1, 1, 1, 1, 1, 0, 0, 0]  # TP=4, FP=1, FN=0, TN=3: acc 7/8, F1 = 8/9
    for task in ("mrpc", "qqp"):
        m = glue_metrics(task, preds, LABELS)
        assert list(m) == ["accf1", "accuracy", "f1"]
        assert m["accuracy"] == pytest.approx(0.875)
        assert m["f1"] == pytest.approx(8 / 9)
        assert m["accf1"] == pytest.approx((0.875 + 8 / 9) / 2)  # 0.881944...


def test_cola_matthews():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 0.5
    m = glue_metrics("cola", PREDS, LABELS)
    assert list(m)[0] == "matthews" and m["matthews"] == pytest.approx(0.5)
    assert glue_metrics("cola", [1] * 8, LABELS)["matthews"] == 0.0  # constant prediction


def test_stsb_pearson_spearman():
    labels = [0.0, 1.0, 2.0, 3.0]
    preds = [0.0, 1.0, 3.0, 2.0]
    # Pearson: means 1.5; deviations x=(-1.5,-.5,.5,1.5), y=(-1.5,-.5,1.5,.5); cov sum = 2.25+.25+.75+.75 = 4; var sums 5, 5
    # Spearman on ranks (same values as ranks here) -> also 4/5 = 0.8
    m = glue_metrics("stsb", preds, labels)
    assert m["pearson"] == pytest.approx(0.8)
    assert m["spearman"] == pytest.approx(0.8)
    assert m["corr"] == pytest.approx(0.8)
    # a monotone but non-linear prediction: Spearman 1, Pearson < 1
    m2 = glue_metrics("stsb", [0.0, 1.0, 8.0, 27.0], labels)
    assert m2["spearman"] == pytest.approx(1.0) and m2["pearson"] < 0.95
    assert m2["corr"] == pytest.approx((m2["pearson"] + 1.0) / 2)


def test_rows_and_errors():
    rows = metric_rows("mrpc", PREDS, LABELS)
    assert rows[0] == {"task": "mrpc", "metric": "accf1", "value": 0.75}
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
        glue_metrics("wnli", PREDS, LABELS)
    with pytest.raises(ValueError, match="7 predictions for 8 labels"):
        glue_metrics("rte", PREDS[:7], LABELS)


def test_agrees_with_evaluate_when_available():
    evaluate = pytest.importorskip("evaluate")
    try:
        metric = evaluate.load("glue", "mrpc")
    except Exception as err:  # noqa: BLE001 - the metric script needs the hub
        pytest.skip(f"evaluate cannot load the glue metric offline ({type(err).__name__})")
    ref = metric.compute(predictions=PREDS, references=LABELS)
    ours = glue_metrics("mrpc", PREDS, LABELS)
    assert math.isclose(ref["accuracy"], ours["accuracy"]) and math.isclose(ref["f1"], ours["f1"])
    ref = evaluate.load("glue", "cola").compute(predictions=PREDS, references=LABELS)
    assert math.isclose(ref["matthews_correlation"], glue_metrics("cola", PREDS, LABELS)["matthews"])
    ref = evaluate.load("glue", "stsb").compute(predictions=[0.0, 1.0, 3.0, 2.0], references=[0.0, 1.0, 2.0, 3.0])
    ours = glue_metrics("stsb", [0.0, 1.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0])
    assert math.isclose(ref["pearson"], ours["pearson"]) and math.isclose(ref["spearmanr"], ours["spearman"])
